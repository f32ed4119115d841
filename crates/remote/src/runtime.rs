//! The async runtime behind the blocking API: object_store is async, the rest of the code
//! base is synchronous, so each [`Remote`](crate::Remote) owns a current-thread runtime and
//! blocks on it. CPU work (hashing, compression) goes to the runtime's blocking pool so
//! requests keep flowing meanwhile.

use crate::error::{RemoteError, Result};

pub(crate) fn new() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(RemoteError::Runtime)
}

/// Runs CPU-bound `f` on the blocking pool.
pub(crate) async fn cpu<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        // The closure panicked: carry the panic to the caller as if it ran inline.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
