//! Work cut into independent parts, run on scoped threads: the one pattern behind decoding a batch,
//! reading and splitting a file, and filling a flush's blocks.

/// Threads from the environment variable `var`, else the machine's cores, at most 4; never 0.
pub fn from_env(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
        .max(1)
}

/// Up to `threads` consecutive ranges of about equal length covering `0..n`, each at least `min_each`
/// long (a thread for less costs more than it saves); one range when `n` is small.
pub fn even_ranges(n: usize, threads: usize, min_each: usize) -> Vec<(usize, usize)> {
    let k = threads.min(n / min_each.max(1)).max(1);
    (0..k).map(|i| (n * i / k, n * (i + 1) / k)).collect()
}

/// Runs every job, the first on this thread and each other on a thread of its own, and returns their
/// results in job order.
pub fn run_all<T: Send, F: FnOnce() -> T + Send>(jobs: impl IntoIterator<Item = F>) -> Vec<T> {
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.map(|job| scope.spawn(job)).collect();
        let mut out = Vec::with_capacity(handles.len() + 1);
        out.push(first());
        out.extend(handles.into_iter().map(|h| h.join().expect("a worker thread panicked")));
        out
    })
}

/// A job that `run_weighted` places by its weight (e.g. the bytes it copies).
pub type Weighted<'a> = (usize, Box<dyn FnOnce() + Send + 'a>);

/// Runs every job on up to `threads` threads, the heaviest first, each onto the least loaded thread: for
/// many small jobs of known sizes, such as appending a batch's columns.
pub fn run_weighted(mut jobs: Vec<Weighted<'_>>, threads: usize) {
    jobs.sort_by_key(|&(weight, _)| std::cmp::Reverse(weight));
    let mut groups: Vec<(usize, Vec<Box<dyn FnOnce() + Send + '_>>)> = Vec::new();
    for (weight, job) in jobs {
        if groups.len() < threads.max(1) {
            groups.push((weight, vec![job]));
        } else {
            let lightest = groups.iter_mut().min_by_key(|(load, _)| *load).expect("a group");
            lightest.0 += weight;
            lightest.1.push(job);
        }
    }
    run_all(groups.into_iter().map(|(_, group)| move || group.into_iter().for_each(|job| job())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_in_order_and_results_come_back_in_job_order() {
        assert_eq!(even_ranges(10, 4, 3), [(0, 3), (3, 6), (6, 10)]);
        assert_eq!(even_ranges(5, 4, 8), [(0, 5)]);
        assert_eq!(even_ranges(0, 4, 8), [(0, 0)]);
        let out = run_all((0..5).map(|i| move || i * i));
        assert_eq!(out, [0, 1, 4, 9, 16]);
        assert!(run_all(Vec::<fn() -> u8>::new()).is_empty());
    }

    #[test]
    fn weighted_jobs_all_run() {
        let mut cells = vec![0usize; 7];
        for threads in [1, 2, 3, 10] {
            let jobs: Vec<Weighted> =
                cells.iter_mut().enumerate().map(|(i, c)| (i % 3, Box::new(move || *c += i) as _)).collect();
            run_weighted(jobs, threads);
        }
        assert_eq!(cells, (0..7).map(|i| 4 * i).collect::<Vec<_>>());
        run_weighted(Vec::new(), 2);
    }
}
