//! A question on the terminal whose answer is not echoed (the key of `add-key`). Echo is
//! turned off on `/dev/tty` for the read only, and always turned back on: also when Ctrl-C or
//! a termination signal ends the read, which then takes its usual effect.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that ended the read, 0 while none came.
static CAUGHT: AtomicI32 = AtomicI32::new(0);
const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// Writes `prompt` to the terminal and reads one line with echo off. `Ok(None)` when the
/// terminal closed first; a signal that ends the read ends the process as it would have,
/// once echo is back on. At most `max` bytes are kept (the rest of the line is read and
/// dropped, so the caller can tell the answer was too long by its length).
pub fn read_hidden(prompt: &str, max: usize) -> std::io::Result<Option<String>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data filled by tcgetattr on an open descriptor.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let handlers = Handlers::install();
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
    // SAFETY: as above; TCSAFLUSH drops what was typed before the question.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let _ = (&tty).write_all(prompt.as_bytes());
    let answer = read_line(fd, max);
    // SAFETY: restores the settings saved above, whatever happened meanwhile.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    let _ = (&tty).write_all(b"\n");
    drop(handlers);
    let sig = CAUGHT.swap(0, Ordering::SeqCst);
    if sig != 0 {
        // SAFETY: the handler of `sig` is the caller's again: the signal acts as it would
        // have without this prompt (ends the process, unless it was ignored).
        unsafe { libc::raise(sig) };
        return Ok(None);
    }
    answer
}

/// Reads up to a newline, waking every 100 ms to see whether a signal came (a signal that
/// arrives just before a blocking read would otherwise wait for the next key press).
fn read_line(fd: libc::c_int, max: usize) -> std::io::Result<Option<String>> {
    let mut line: Vec<u8> = Vec::new();
    loop {
        if CAUGHT.load(Ordering::SeqCst) != 0 {
            return Ok(None);
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut p, 1, 100) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        // SAFETY: reads into a local buffer of the length given.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        for &b in &buf[..n as usize] {
            if b == b'\n' || b == b'\r' {
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if line.len() <= max {
                line.push(b);
            }
        }
    }
}

/// Our handlers for the termination signals while echo is off; dropping it puts the
/// previous ones back.
struct Handlers {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl Handlers {
    fn install() -> Handlers {
        CAUGHT.store(0, Ordering::SeqCst);
        let mut old = Vec::new();
        for sig in SIGNALS {
            // SAFETY: sigaction structs are plain data; no SA_RESTART, so a blocked poll or
            // read returns EINTR and the loop sees the signal.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut act.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &act, &mut prev) != 0 {
                    continue;
                }
                if prev.sa_sigaction == libc::SIG_IGN {
                    // Ignored (nohup): it stays ignored.
                    libc::sigaction(sig, &prev, std::ptr::null_mut());
                } else {
                    old.push((sig, prev));
                }
            }
        }
        Handlers { old }
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for (sig, prev) in &self.old {
            // SAFETY: restores an action sigaction gave us.
            unsafe { libc::sigaction(*sig, prev, std::ptr::null_mut()) };
        }
    }
}
