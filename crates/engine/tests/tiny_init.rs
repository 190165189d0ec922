//! The hibernating init (`tiny/init.rs`) on its own, outside an ISC: a shell starts a service
//! and execs the tiny init from its sealed memfd, as PID 1 does, with a channel at fd 3. What
//! an ISC cannot easily provoke is checked here: a failed wake is reported, a signal is
//! forwarded and the end reported in the whole PID 1's words, a closed channel ends it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use isc_engine::channel::{Channel, FromInit, ToInit};
use isc_engine::{fdpass, hibernate};

/// `sh` starts `sleep 30` and execs the tiny init with the sleep's pid; fd 3 is `chan`.
// The child is returned to the caller, which waits for it (`wait_exit`); the lint cannot see
// across the return.
#[allow(clippy::zombie_processes)]
fn start(chan: &Channel) -> (Child, i32) {
    let exe = hibernate::tiny_init().unwrap();
    let (chan_fd, exe_fd) = (chan.raw_fd(), exe.as_raw_fd());
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "/bin/sleep 30 & exec /proc/self/fd/4 $!"]);
    // SAFETY: only dup2 (async-signal-safe) between fork and exec; dup2 leaves the new
    // descriptors without FD_CLOEXEC, so the shell and then the tiny init inherit them.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(chan_fd, 3) < 0 || libc::dup2(exe_fd, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The service is the tiny init's only child once the shell has exec'd it.
    let t = Instant::now();
    loop {
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap_or_default();
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .unwrap_or_default();
        if exe.to_string_lossy().starts_with("/memfd:isc-init") && !kids.trim().is_empty() {
            return (child, kids.trim().parse().unwrap());
        }
        if t.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the shell did not exec the tiny init");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the tiny init did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_failed_wake_is_reported_and_a_forwarded_signal_ends_it_with_the_services_status() {
    let (monitor, init_end) = Channel::pair().unwrap();
    let (mut child, service) = start(&init_end);
    // Not an executable: execveat fails (EACCES) and the tiny init says so and stays.
    let not_exe: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    fdpass::send_with_fds(&monitor, &ToInit::Wake, &[not_exe.as_raw_fd()]).unwrap();
    assert_eq!(
        monitor.recv::<FromInit>().unwrap(),
        Some(FromInit::WakeFailed { errno: libc::EACCES })
    );
    // Probe requests are the whole PID 1's: dropped, nothing answered, nothing forked.
    monitor.send(&ToInit::Probe { id: 1, name: "mount".into() }).unwrap();
    monitor.send(&ToInit::Signal { signo: libc::SIGTERM }).unwrap();
    assert_eq!(
        monitor.recv::<FromInit>().unwrap(),
        Some(FromInit::ServiceExited { code: None, signal: Some(libc::SIGTERM), alone: true })
    );
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{st:?}");
    assert!(std::fs::metadata(format!("/proc/{service}")).is_err(), "the service was reaped");
}

#[test]
fn it_exits_when_the_monitor_closes_the_channel() {
    let (monitor, init_end) = Channel::pair().unwrap();
    let (mut child, service) = start(&init_end);
    drop(init_end);
    drop(monitor);
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(137), "{st:?}");
    assert_eq!(st.signal(), None);
    // Outside a PID namespace the service outlives it (inside one, PID 1's exit ends it).
    // SAFETY: SIGKILL to the sleep this test started.
    unsafe { libc::kill(service, libc::SIGKILL) };
}
