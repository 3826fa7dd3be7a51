//! Reading an input file and cutting it into lines on several threads.
//!
//! A replay's input is hundreds of megabytes in the page cache: reading it is a copy into fresh memory,
//! whose page faults cost about as much as the copy, and one thread does both at about 2 GB/s. Both
//! split into independent byte ranges, so each thread reads (and faults in) its own range, and then each
//! cuts its own range into lines.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::decode::{self, Lines};
use crate::threads;

/// Fewest bytes per thread: below this a thread costs more than it saves.
pub const MIN_BYTES_PER_THREAD: usize = 8 << 20;

/// Fills `buf` with the file's bytes from offset 0, each range on its own thread. A file shorter than
/// `buf` is an `UnexpectedEof` error: the caller then reads it the ordinary way.
pub fn read_into(file: &File, buf: &mut [u8], threads: usize) -> io::Result<()> {
    let mut parts: Vec<(usize, &mut [u8])> = Vec::new();
    let mut rest = buf;
    for (a, b) in threads::even_ranges(rest.len(), threads, MIN_BYTES_PER_THREAD) {
        let (head, tail) = rest.split_at_mut(b - a);
        parts.push((a, head));
        rest = tail;
    }
    threads::run_all(parts.into_iter().map(|(a, part)| move || file.read_exact_at(part, a as u64)))
        .into_iter()
        .collect()
}

/// The lines (`decode::Lines`) of `buf` from `from`, each range (cut just after a line feed) on its own
/// thread: the same spans and line numbers as one pass.
pub fn split_lines(buf: &[u8], from: usize, threads: usize) -> (Vec<i64>, Vec<i64>, Option<Vec<i64>>) {
    let from = from.min(buf.len());
    let k = threads::even_ranges(buf.len() - from, threads, MIN_BYTES_PER_THREAD).len();
    let cuts = cuts(buf, from, k);
    merge(threads::run_all(cuts.windows(2).map(|w| (w[0], w[1])).map(|(a, b)| move || decode::split_range(buf, a, b))))
}

/// Offsets cutting `buf[from..]` into up to `k` ranges of about equal length, each but the last ending
/// just after a line feed: `from`, the cuts, `buf.len()`.
fn cuts(buf: &[u8], from: usize, k: usize) -> Vec<usize> {
    let n = buf.len() - from;
    let mut out = vec![from];
    for i in 1..k {
        let at = (from + n * i / k).max(*out.last().expect("a first cut"));
        match buf[at..].iter().position(|&c| c == b'\n') {
            Some(nl) if at + nl + 1 < buf.len() => out.push(at + nl + 1),
            _ => break,
        }
    }
    out.push(buf.len());
    out
}

/// The ranges' lines as those of one buffer: line numbers moved by the lines of the ranges before.
fn merge(parts: Vec<Lines>) -> (Vec<i64>, Vec<i64>, Option<Vec<i64>>) {
    let numbered = parts.iter().any(|p| p.numbers.is_some());
    let mut parts = parts.into_iter();
    let first = parts.next().expect("at least one range");
    let (mut starts, mut ends) = (first.starts, first.ends);
    let mut numbers = numbered.then(|| first.numbers.unwrap_or_else(|| (1..=starts.len() as i64).collect()));
    let mut lines_before = first.count;
    for p in parts {
        if let Some(n) = numbers.as_mut() {
            match &p.numbers {
                Some(own) => n.extend(own.iter().map(|&k| k + lines_before)),
                None => n.extend((1..=p.starts.len() as i64).map(|k| k + lines_before)),
            }
        }
        starts.extend(p.starts);
        ends.extend(p.ends);
        lines_before += p.count;
    }
    (starts, ends, numbers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers of lines of every kind: blank, whitespace-only, CRLF, no final line feed.
    fn buffers() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut seed = 7u64;
        for size in [0usize, 1, 5, 100, 5000] {
            for _ in 0..4 {
                let mut b = Vec::new();
                for _ in 0..size {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    match (seed >> 33) % 7 {
                        0 => b.extend_from_slice(b"\n"),
                        1 => b.extend_from_slice(b"  \t\n"),
                        2 => b.extend_from_slice(b"{\"a\":1}\r\n"),
                        _ => b.extend_from_slice(format!("{{\"id\":\"{}\"}}\n", seed % 1000).as_bytes()),
                    }
                }
                if (seed >> 20) % 2 == 0 && !b.is_empty() {
                    b.pop(); // no final line feed
                }
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn split_on_threads_equals_one_pass() {
        for buf in buffers() {
            for from in [0, 3] {
                let one = decode::split_lines(&buf, from);
                for k in [2, 3, 8] {
                    let got = split_small(&buf, from, k);
                    assert_eq!(got, one, "{} bytes, from {from}, {k} ranges", buf.len());
                }
            }
        }
    }

    /// `split_lines` with every range cut however short (the real minimum would leave test buffers whole).
    fn split_small(buf: &[u8], from: usize, k: usize) -> (Vec<i64>, Vec<i64>, Option<Vec<i64>>) {
        let from = from.min(buf.len());
        let cuts = cuts(buf, from, k);
        merge(cuts.windows(2).map(|w| decode::split_range(buf, w[0], w[1])).collect())
    }

    #[test]
    fn read_on_threads_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("mlmon-read-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let data: Vec<u8> = (0..(3 * MIN_BYTES_PER_THREAD + 12345)).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = vec![0u8; data.len()];
        read_into(&file, &mut buf, 4).unwrap();
        assert!(buf == data);
        let mut longer = vec![0u8; data.len() + 1];
        assert_eq!(read_into(&file, &mut longer, 4).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
