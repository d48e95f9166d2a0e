//! A progress bar for long computations, shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::{Client, RemoteData};
use crate::error::{Error, Result};

/// Computations shorter than this never show a bar.
const QUIET_FOR: Duration = Duration::from_millis(500);

/// Waits for every handle, drawing a bar of `tasks` tasks if it takes a while.
pub(super) fn wait_all(client: &Client, tasks: usize, handles: &[RemoteData]) -> Result<()> {
    if !std::io::stderr().is_terminal() {
        return handles.iter().try_for_each(RemoteData::wait);
    }
    let backend = client.backend();
    let start_count = backend.tasks_finished();
    let started = Instant::now();
    let mut bar: Option<ProgressBar> = None;
    for h in handles {
        loop {
            match backend.wait(h.key(), Some(Duration::from_millis(100))) {
                Err(Error::Timeout { .. }) => {}
                other => {
                    if let (Err(_), Some(b)) = (&other, &bar) {
                        b.abandon();
                    }
                    other?;
                    break;
                }
            }
            if bar.is_none() && started.elapsed() > QUIET_FOR {
                let b = ProgressBar::new(tasks as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} tasks {elapsed} (eta {eta})",
                    )
                    .expect("valid template"),
                );
                bar = Some(b);
            }
            if let Some(b) = &bar {
                b.set_position((backend.tasks_finished() - start_count).min(tasks as u64));
            }
        }
    }
    if let Some(b) = bar {
        b.set_position(tasks as u64);
        b.finish_and_clear();
    }
    Ok(())
}
