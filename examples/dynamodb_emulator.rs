//! A DynamoDB emulator (dynoxide, in memory, nothing persisted) on a loopback port, to try the
//! DynamoDB backend without an AWS account:
//!
//! ```sh
//! cargo run --example dynamodb_emulator -- 8000
//! aft serve --backend 'dynamodb://aft?endpoint=http://127.0.0.1:8000&region=us-east-1&create_table=true'
//! ```
//!
//! The argument is the port (default 8000; 0 picks a free one). Prints
//! `listening on http://ADDR` once it accepts requests, and runs until killed.

use std::io::Write;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        None => 8000,
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            eprintln!("usage: dynamodb_emulator [PORT]");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dynamodb_emulator: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let db = match dynoxide::Database::memory() {
        Ok(db) => db,
        Err(e) => {
            eprintln!("dynamodb_emulator: {e}");
            std::process::exit(1);
        }
    };
    if let Ok(addr) = listener.local_addr() {
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = dynoxide::server::serve_with_shutdown(listener, db, shutdown).await {
        eprintln!("dynamodb_emulator: {e}");
        std::process::exit(1);
    }
}
