//! One instance of a costly fixture (a control plane, a cluster) for every test of a test binary:
//! started by the first caller, stopped when the process exits.

use std::future::Future;
use std::sync::Arc;

use crate::error::Result;

pub(crate) struct Shared<T>(tokio::sync::Mutex<Option<Arc<T>>>);

impl<T> Shared<T> {
    pub const fn new() -> Self {
        Self(tokio::sync::Mutex::const_new(None))
    }

    /// The running instance, or a new one from `start`. `stop_at_exit` must call [`Self::stop`]
    /// on the same static: statics are never dropped, and the test harness leaves through `exit`,
    /// so that is how the instance gets stopped cleanly. (If the process is killed instead, the
    /// parent-death signal stops the processes, and a node's janitor removes the node.)
    pub async fn get_or_start(
        &'static self,
        start: impl Future<Output = Result<T>>,
        stop_at_exit: extern "C" fn(),
    ) -> Result<Arc<T>> {
        let mut shared = self.0.lock().await;
        if let Some(instance) = shared.as_ref() {
            return Ok(instance.clone());
        }
        let instance = Arc::new(start.await?);
        // SAFETY: registers a plain function; a failure to register only loses the clean stop.
        unsafe { libc::atexit(stop_at_exit) };
        *shared = Some(instance.clone());
        Ok(instance)
    }

    pub fn stop(&self) {
        if let Ok(mut shared) = self.0.try_lock() {
            drop(shared.take());
        }
    }
}
