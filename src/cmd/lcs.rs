//! LCS: the longest common subsequence of two strings, as Redis 7.0 computes and reports it
//! (the same table, the same walk back through it, so the same matches in the same order).

use bytes::Bytes;

use super::util::{err, int_arg, SYNTAX};
use crate::resp::Reply;

/// Tables larger than this many cells are computed off the async workers.
const BLOCKING_CELLS: u64 = 1 << 20;

/// What LCS reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LcsOptions {
    /// `LEN`: the length only.
    len: bool,
    /// `IDX`: the matching ranges and the length.
    idx: bool,
    /// `MINMATCHLEN`: ranges shorter than this are left out (0: none).
    min_match_len: u64,
    /// `WITHMATCHLEN`: each range with its length.
    with_match_len: bool,
}

impl LcsOptions {
    /// Parses the options after the two keys; `Err` is the reply Redis gives.
    pub fn parse(args: &[Bytes]) -> Result<LcsOptions, Reply> {
        let mut options = LcsOptions {
            len: false,
            idx: false,
            min_match_len: 0,
            with_match_len: false,
        };
        let mut i = 0;
        while i < args.len() {
            let opt = args[i].to_ascii_lowercase();
            let more = args.len() - 1 - i;
            match opt.as_slice() {
                b"idx" => options.idx = true,
                b"len" => options.len = true,
                b"withmatchlen" => options.with_match_len = true,
                b"minmatchlen" if more > 0 => {
                    let n = int_arg(&args[i + 1])?;
                    options.min_match_len = u64::try_from(n).unwrap_or(0);
                    i += 1;
                }
                _ => return Err(err(SYNTAX)),
            }
            i += 1;
        }
        if options.len && options.idx {
            return Err(err(
                "ERR If you want both the length and indexes, please just use IDX.",
            ));
        }
        Ok(options)
    }
}

/// LCS of `a` and `b` (missing keys are empty strings) as `options` asks, refused if its
/// table (4 bytes a cell) would exceed `max_table_bytes` (`max_bulk_len`, Redis's
/// `proto-max-bulk-len`).
pub async fn lcs(a: Bytes, b: Bytes, options: LcsOptions, max_table_bytes: usize) -> Reply {
    if a.len() as u64 >= u64::from(u32::MAX) - 1 || b.len() as u64 >= u64::from(u32::MAX) - 1 {
        return err("ERR String too long for LCS");
    }
    let cells = (a.len() as u64 + 1) * (b.len() as u64 + 1);
    if cells.saturating_mul(4) > max_table_bytes as u64 {
        return err("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len");
    }
    if cells > BLOCKING_CELLS {
        match tokio::task::spawn_blocking(move || compute(&a, &b, &options)).await {
            Ok(reply) => reply,
            Err(e) => err(format!("ERR LCS failed: {e}")),
        }
    } else {
        compute(&a, &b, &options)
    }
}

/// Builds the table and walks it back from the end, as Redis's `lcsCommand` does.
fn compute(a: &[u8], b: &[u8], options: &LcsOptions) -> Reply {
    let (alen, blen) = (a.len(), b.len());
    let width = blen + 1;
    let mut table = vec![0u32; (alen + 1) * width];
    for i in 1..=alen {
        for j in 1..=blen {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let at = |i: usize, j: usize| table[i * width + j];
    let total = at(alen, blen);
    if options.len {
        return Reply::Integer(i64::from(total));
    }
    let mut result = vec![0u8; total as usize];
    let mut matches = Vec::new();
    let mut idx = total as usize;
    // `alen` as the start means no range is being tracked.
    let (mut a_start, mut a_end, mut b_start, mut b_end) = (alen, 0usize, 0usize, 0usize);
    let (mut i, mut j) = (alen, blen);
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            result[idx - 1] = a[i - 1];
            if a_start == alen {
                (a_start, a_end, b_start, b_end) = (i - 1, i - 1, j - 1, j - 1);
            } else if a_start == i && b_start == j {
                a_start -= 1;
                b_start -= 1;
            } else {
                emit = true;
            }
            if a_start == 0 || b_start == 0 {
                emit = true;
            }
            idx -= 1;
            i -= 1;
            j -= 1;
        } else {
            if at(i - 1, j) > at(i, j - 1) {
                i -= 1;
            } else {
                j -= 1;
            }
            if a_start != alen {
                emit = true;
            }
        }
        if emit {
            // Redis computes it in u32 arithmetic, wrapping when no range is tracked.
            let match_len = (a_end as u32).wrapping_sub(a_start as u32).wrapping_add(1);
            if options.min_match_len == 0 || u64::from(match_len) >= options.min_match_len {
                let mut range = vec![
                    Reply::Array(vec![int(a_start), int(a_end)]),
                    Reply::Array(vec![int(b_start), int(b_end)]),
                ];
                if options.with_match_len {
                    range.push(Reply::Integer(i64::from(match_len)));
                }
                matches.push(Reply::Array(range));
            }
            a_start = alen;
        }
    }
    if options.idx {
        Reply::Map(vec![
            (
                Reply::Bulk(Bytes::from_static(b"matches")),
                Reply::Array(matches),
            ),
            (
                Reply::Bulk(Bytes::from_static(b"len")),
                Reply::Integer(i64::from(total)),
            ),
        ])
    } else {
        Reply::Bulk(Bytes::from(result))
    }
}

fn int(n: usize) -> Reply {
    Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Result<LcsOptions, Reply> {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        LcsOptions::parse(&args)
    }

    #[test]
    fn the_documented_example() {
        let (a, b) = (b"ohmytext", b"mynewtext");
        let plain = opts(&[]).unwrap();
        assert_eq!(
            compute(a, b, &plain),
            Reply::Bulk(Bytes::from_static(b"mytext"))
        );
        let len = opts(&["LEN"]).unwrap();
        assert_eq!(compute(a, b, &len), Reply::Integer(6));
        let ranges = |r: &[[i64; 4]]| {
            Reply::Array(
                r.iter()
                    .map(|[a0, a1, b0, b1]| {
                        Reply::Array(vec![
                            Reply::Array(vec![Reply::Integer(*a0), Reply::Integer(*a1)]),
                            Reply::Array(vec![Reply::Integer(*b0), Reply::Integer(*b1)]),
                        ])
                    })
                    .collect(),
            )
        };
        let idx = opts(&["IDX"]).unwrap();
        assert_eq!(
            compute(a, b, &idx),
            Reply::Map(vec![
                (
                    Reply::Bulk(Bytes::from_static(b"matches")),
                    ranges(&[[4, 7, 5, 8], [2, 3, 0, 1]])
                ),
                (Reply::Bulk(Bytes::from_static(b"len")), Reply::Integer(6)),
            ])
        );
        let min = opts(&["IDX", "MINMATCHLEN", "4"]).unwrap();
        assert_eq!(
            compute(a, b, &min),
            Reply::Map(vec![
                (
                    Reply::Bulk(Bytes::from_static(b"matches")),
                    ranges(&[[4, 7, 5, 8]])
                ),
                (Reply::Bulk(Bytes::from_static(b"len")), Reply::Integer(6)),
            ])
        );
    }

    #[tokio::test]
    async fn a_table_past_redis_limit_is_refused_and_a_large_one_computed_aside() {
        let big = Bytes::from(vec![b'a'; 12_000]);
        assert_eq!(
            lcs(big.clone(), big, opts(&[]).unwrap(), 512 << 20).await,
            err("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len")
        );
        // Over a million cells: computed on a blocking thread, the same answer.
        let a: Bytes = (0..1100u32)
            .map(|i| b"ACGT"[(i * 7 % 5) as usize % 4])
            .collect();
        let b: Bytes = (0..1100u32)
            .map(|i| b"ACGT"[(i * 3 % 7) as usize % 4])
            .collect();
        let options = opts(&["IDX", "WITHMATCHLEN"]).unwrap();
        assert_eq!(
            lcs(a.clone(), b.clone(), options.clone(), 512 << 20).await,
            compute(&a, &b, &options)
        );
    }

    #[test]
    fn options_are_refused_as_redis_refuses_them() {
        assert_eq!(
            opts(&["LEN", "IDX"]).unwrap_err(),
            err("ERR If you want both the length and indexes, please just use IDX.")
        );
        assert_eq!(opts(&["NOPE"]).unwrap_err(), err(SYNTAX));
        assert_eq!(opts(&["MINMATCHLEN"]).unwrap_err(), err(SYNTAX));
        assert_eq!(
            opts(&["MINMATCHLEN", "x"]).unwrap_err(),
            err(super::super::util::NOT_INTEGER)
        );
        assert_eq!(
            opts(&["minmatchlen", "-5", "idx"]).unwrap().min_match_len,
            0
        );
    }
}
