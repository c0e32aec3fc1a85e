//! Turns bursts of store changes into pushes: a push fires once the store has been quiet for
//! the quiet period, or at the latest `max_delay` after the first change of the burst.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// Runs until the store is gone or no stream can listen any more.
pub(super) async fn run(
    mut changes: watch::Receiver<u64>,
    push: watch::Sender<u64>,
    quiet: Duration,
    max_delay: Duration,
) {
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = push.closed() => return,
        }
        let deadline = Instant::now() + max_delay;
        loop {
            let wake = (Instant::now() + quiet).min(deadline);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() { return }
                    if Instant::now() >= deadline { break }
                }
                () = sleep_until(wake) => break,
            }
        }
        changes.mark_unchanged();
        push.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn a_burst_becomes_one_push_after_the_quiet_period() {
        let (changes, changes_rx) = watch::channel(0);
        let (push_tx, mut push) = watch::channel(0);
        tokio::spawn(run(changes_rx, push_tx, QUIET, MAX));
        let start = Instant::now();
        for _ in 0..5 {
            changes.send_modify(|n| *n += 1);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        push.changed().await.expect("debouncer alive");
        assert_eq!(*push.borrow_and_update(), 1);
        // Last change at 20 ms, quiet for 10 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_changes_still_pushes_by_the_max_delay() {
        let (changes, changes_rx) = watch::channel(0);
        let (push_tx, mut push) = watch::channel(0);
        tokio::spawn(run(changes_rx, push_tx, QUIET, MAX));
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                changes.send_modify(|n| *n += 1);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        push.changed().await.expect("debouncer alive");
        assert!(
            start.elapsed() <= MAX + Duration::from_millis(5),
            "{:?}",
            start.elapsed()
        );
        writer.abort();
    }
}
