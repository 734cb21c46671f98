//! Deferring Ctrl-C and termination across a refresh. Once the server has taken the old
//! refresh token, dying before the new one is stored loses the account; so SIGINT, SIGTERM,
//! SIGHUP and SIGQUIT are blocked from the request until the store is written, and take their
//! usual effect then (or during the wait between retries, when nothing is in flight).

/// Signals are held back while this lives; dropping it lets pending ones through.
pub struct Deferred {
    old: libc::sigset_t,
}

impl Deferred {
    pub fn new() -> Deferred {
        // SAFETY: plain libc calls on sigset_t values owned here; pthread_sigmask only reads
        // `set` and writes `old`. It masks this thread; helper threads are started deaf to
        // every signal (`spawn_deaf`), so none of them can take one instead.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::sigaddset(&mut set, sig);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Deferred { old }
        }
    }

    /// Runs `f` (a wait with nothing in flight) with signals let through: one that came
    /// meanwhile, or comes during `f`, ends the process as usual.
    pub fn unblocked<T>(&self, f: impl FnOnce() -> T) -> T {
        // SAFETY: as in `new`; restores the caller's mask, then blocks the same set again.
        unsafe {
            let mut blocked: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, &mut blocked);
            let out = f();
            libc::pthread_sigmask(libc::SIG_SETMASK, &blocked, std::ptr::null_mut());
            out
        }
    }
}

/// Starts a helper thread (the Qwen CLI lock's heartbeat) that never takes a signal, so one
/// always reaches the main thread, which defers it or not. The thread inherits a mask that
/// blocks everything from its first instruction.
pub fn spawn_deaf(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // SAFETY: as in `Deferred::new`; the calling thread's mask is restored before returning.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}
