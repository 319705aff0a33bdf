//! A DynamoDB emulator for tests (dynoxide, in memory), used by the DynamoDB backend's unit
//! tests and by the integration tests.

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::storage::dynamodb::{CredentialSource, DynamoDbOptions};

/// A DynamoDB emulator (dynoxide, in memory) serving on a loopback port from inside the test
/// process, on the runtime that started it; stopped on drop.
pub struct Emulator {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Emulator {
    /// Starts one on a free port.
    pub async fn start() -> Emulator {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind emulator");
        let addr = listener.local_addr().expect("emulator address");
        let db = dynoxide::Database::memory().expect("emulator database");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = dynoxide::server::serve_with_shutdown(listener, db, async {
                let _ = stopped.await;
            })
            .await;
        });
        Emulator {
            endpoint: format!("http://{addr}"),
            stop: Some(stop),
        }
    }

    /// Options for `table` on this emulator (created if missing; static credentials).
    pub fn options(&self, table: &str) -> DynamoDbOptions {
        DynamoDbOptions {
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint.clone()),
            create_table: true,
            credentials: CredentialSource::Static {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
            },
            max_attempts: 5,
            ..DynamoDbOptions::new(table)
        }
    }

    /// How many stored versions of user keys `table` holds now (items whose partition is a
    /// key's versions; their overflow chunks not counted), by a `Scan`.
    pub async fn stored_versions(&self, table: &str) -> usize {
        let client = crate::storage::dynamodb::sdk_client(&self.options(table))
            .await
            .expect("client");
        let mut count = 0;
        let mut start = None;
        loop {
            let page = client
                .scan()
                .table_name(table)
                .projection_expression("pk")
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            count += page
                .items()
                .iter()
                .filter_map(|item| item.get("pk")?.as_b().ok())
                .filter(|pk| matches!(pk.as_ref().first(), Some(b'v' | b'h')))
                .count();
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return count;
            }
        }
    }

    /// The `--backend` URL of `table` on this emulator, for `aft serve`.
    pub fn url(&self, table: &str) -> String {
        format!(
            "dynamodb://{table}?endpoint={}&region=us-east-1&create_table=true",
            self.endpoint
        )
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
