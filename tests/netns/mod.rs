//! Test-only network namespace helpers: an RAII [`Namespace`] (made and deleted with `ip netns`)
//! and [`Namespace::run`], which runs a closure on a thread that has entered the namespace.
//!
//! Anything the closure creates (a TUN device, a netlink socket, a TCP socket) belongs to the
//! namespace for good, and can be used from any thread afterwards: the namespace is bound when
//! the file descriptor is made. So a test enters a tokio runtime inside the closure, creates its
//! devices there, and drives them from the runtime's own threads.
//!
//! Production code never shells out: it uses the crate's netlink module.

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Skips (returns false) when the test cannot run here: not root, or no `/dev/net/tun`.
/// With `CI=true` a skip is a failure, so CI cannot pass by running nothing.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Path::new("/dev/net/tun").exists() {
        return true;
    }
    let reason = format!("SKIPPED: {test} needs root and /dev/net/tun");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason} (CI=true: a skip is a failure)");
    }
    eprintln!("{reason}");
    false
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) -> String {
    let output = run_ip(args);
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("the `ip` command (iproute2) is installed")
}

/// A network namespace that exists as long as this value: made with `ip netns add`, deleted
/// with `ip netns del` on drop (also when the test panics). Deleting it destroys every
/// interface inside, TUN devices and veth ends included.
#[derive(Debug)]
pub struct Namespace {
    /// The name under /var/run/netns.
    name: String,
}

impl Namespace {
    /// Creates a namespace with a unique name made of `label`, the process ID and a counter,
    /// with its loopback up.
    pub fn new(label: &str) -> Namespace {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("sluice-{}-{n}-{label}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Namespace { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS` and returns its stdout, panicking if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a new thread that has entered this namespace and returns its result
    /// (re-raising its panic).
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter(&path);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Namespace::run`], but returns at once; join the handle for the result.
    pub fn spawn<T, F>(&self, f: F) -> std::thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// Creates a veth pair, `here` in this namespace and `there` in `other`, both up.
    /// It is destroyed with either namespace (or by [`Veth`]'s drop).
    pub fn veth(&self, here: &str, other: &Namespace, there: &str) -> Veth {
        self.ip(&[
            "link",
            "add",
            here,
            "type",
            "veth",
            "peer",
            "name",
            there,
            "netns",
            &other.name,
        ]);
        self.ip(&["link", "set", here, "up"]);
        other.ip(&["link", "set", there, "up"]);
        Veth {
            namespace: self.name.clone(),
            name: here.to_owned(),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Not `ip()`: a failing delete must not turn an unwinding test into an abort.
        let output = run_ip(&["netns", "del", &self.name]);
        if !output.status.success() {
            eprintln!(
                "cannot delete namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// One end of a veth pair; deleting it (on drop) deletes both ends.
#[derive(Debug)]
pub struct Veth {
    /// Namespace the end lives in.
    namespace: String,
    /// Interface name of the end.
    name: String,
}

impl Veth {
    /// Interface name of this end.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // The namespace may be gone already, taking the pair with it: nothing to report.
        let _ = run_ip(&["-n", &self.namespace, "link", "del", &self.name]);
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: the descriptor is open for the duration of the call; CLONE_NEWNET only changes
    // this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}
