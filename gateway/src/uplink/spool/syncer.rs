//! The spool's fsyncs, on a thread of their own (`sprig-spool-sync`). An fsync on an SD card takes
//! milliseconds, and under other writes hundreds of them; the spool's thread confirms each record to the
//! publisher whose PUBACK waits for it, and must not wait for the disk meanwhile. Every
//! [`SYNC_INTERVAL`](super::SYNC_INTERVAL) while records arrive, the spool hands this thread duplicates of
//! its files' handles; when the last sync still runs, the spool asks again at the next interval. A sync
//! that fails is kept, and stops the spool at its next turn, as a failed write does.

use std::fs::File;
use std::io;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The thread that syncs the spool's files; stopped (after its last sync) when dropped.
pub struct Syncer {
    requests: Option<SyncSender<Vec<File>>>,
    failure: Arc<Mutex<Option<io::Error>>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub fn start() -> io::Result<Syncer> {
        // No buffer: a request is taken only by a thread that waits for one, so a slow disk makes the
        // spool skip a turn instead of queueing syncs.
        let (requests, received) = mpsc::sync_channel::<Vec<File>>(0);
        let failure = Arc::new(Mutex::new(None));
        let failed = failure.clone();
        let thread = std::thread::Builder::new()
            .name("sprig-spool-sync".into())
            .spawn(move || {
                for files in received {
                    if let Err(e) = files.iter().try_for_each(File::sync_data) {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                }
            })?;
        Ok(Syncer {
            requests: Some(requests),
            failure,
            thread: Some(thread),
        })
    }

    /// Syncs `files` unless the last sync still runs: true when taken.
    pub fn request(&self, files: Vec<File>) -> bool {
        let Some(requests) = &self.requests else {
            return false;
        };
        match requests.try_send(files) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// The error of a sync that failed since the last call, if any.
    pub fn failure(&self) -> Option<io::Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn syncs_what_it_is_handed_and_reports_a_failed_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("a")).unwrap();
        file.write_all(b"record").unwrap();
        let syncer = Syncer::start().unwrap();
        // Taken once the thread waits for a request (it may not be there yet).
        while !syncer.request(vec![file.try_clone().unwrap()]) {
            std::thread::yield_now();
        }
        drop(syncer);

        // fsync of a pipe fails with EINVAL: a failure the spool then sees.
        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        let syncer = Syncer::start().unwrap();
        while !syncer.request(vec![pipe.try_clone().unwrap()]) {
            std::thread::yield_now();
        }
        let failure = loop {
            if let Some(e) = syncer.failure() {
                break e;
            }
            std::thread::yield_now();
        };
        assert_eq!(failure.kind(), io::ErrorKind::InvalidInput, "{failure}");
    }
}
