//! The monitor's event loop while the ISC runs: the service's output relayed (or logged),
//! signals forwarded to PID 1 (SIGTERM, then SIGKILL after the stop timeout), control-socket
//! requests answered (state, stop, probes forked by PID 1), until PID 1 is gone.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::channel::{Channel, FromInit, ToInit};
use crate::logfile::Dest;
use crate::monitor::{wait_pidfd, Launched};
use crate::probe::ProbeOutcome;
use crate::spec::IscSpec;
use crate::state::{ControlRequest, ControlResponse, Registration};

struct PendingProbe {
    client: UnixStream,
    waiting: Vec<u64>,
    /// (request id, outcome): answered in request order whatever order the probes finish in.
    outcomes: Vec<(u64, ProbeOutcome)>,
}

pub(crate) struct Supervisor<'a> {
    spec: &'a IscSpec,
    chan: &'a Channel,
    registration: &'a Registration,
    stop_deadline: Option<Instant>,
    pub(crate) exited: Option<(Option<i32>, Option<i32>)>,
    /// `on_end` was called: PID 1 reported the end with nothing else left.
    pub(crate) ended_reported: bool,
    next_probe: u64,
    chan_open: bool,
    pending: Vec<PendingProbe>,
    /// PID 1 was sent the tiny init (`hibernate.rs`) and has not been woken since.
    init_hibernating: bool,
    /// The last time PID 1 had work (the start, probes asked or answered). Its quiet is its
    /// own: a service whose output keeps the monitor busy leaves PID 1 idle all the same.
    init_busy_at: Instant,
    /// False once hibernation failed: PID 1 stays whole (warned once).
    pub(crate) hibernation_works: bool,
    /// False once the monitor itself cannot hibernate (`monitor_hibernate`): it stays whole.
    pub(crate) monitor_hibernation_works: bool,
    /// The service's stdout and stderr and where they go; a closed one is removed.
    outs: Vec<(OwnedFd, Dest)>,
    buf: Vec<u8>,
}

/// Why [`Supervisor::run`] returned.
pub(crate) enum RunEnd {
    /// PID 1 is gone, with this wait status.
    Exited(i32),
    /// Everything has been quiet for a second: the monitor may hibernate.
    Quiet,
}

impl<'a> Supervisor<'a> {
    pub(crate) fn new(
        spec: &'a IscSpec,
        chan: &'a Channel,
        registration: &'a Registration,
        outputs: Vec<(OwnedFd, Dest)>,
    ) -> Supervisor<'a> {
        Supervisor {
            spec,
            chan,
            registration,
            stop_deadline: None,
            exited: None,
            ended_reported: false,
            next_probe: 1,
            chan_open: true,
            pending: Vec::new(),
            init_hibernating: false,
            init_busy_at: Instant::now(),
            hibernation_works: true,
            monitor_hibernation_works: true,
            outs: outputs,
            buf: Vec::with_capacity(RELAY_BUF),
        }
    }

    /// Restores what a hibernated monitor saved (`monitor_hibernate`).
    pub(crate) fn restore(&mut self, saved: &crate::monitor_hibernate::SavedMonitor) {
        self.next_probe = saved.next_probe;
        self.init_hibernating = saved.init_hibernating;
        self.hibernation_works = saved.init_hibernation_works;
        self.monitor_hibernation_works = saved.monitor_hibernation_works;
    }

    pub(crate) fn next_probe(&self) -> u64 {
        self.next_probe
    }

    pub(crate) fn init_hibernating(&self) -> bool {
        self.init_hibernating
    }

    /// The output pipes still open, and whether each is the service's stderr (relayed to
    /// fd 2; both go to one log otherwise).
    pub(crate) fn output_fds(&self) -> Vec<(RawFd, bool)> {
        self.outs.iter().map(|(fd, d)| (fd.as_raw_fd(), d.is_stderr())).collect()
    }

    /// No output is waiting to be written (a log writer thread has parked its file).
    pub(crate) fn outputs_idle(&self) -> bool {
        self.outs.iter().all(|(_, d)| d.is_idle())
    }

    /// The event loop; returns PID 1's wait status. `on_end(code, signal)` is called as soon
    /// as PID 1 reports the service's end with no other process left, while PID 1 itself is
    /// still being torn down (its namespaces, ~0.3 ms): the exit path's slow work (the audit
    /// drain, the exit record and its fdatasync) starts that much earlier. Otherwise
    /// (`ended_reported` false) the caller handles the end once PID 1 is gone.
    pub(crate) fn run(
        &mut self,
        child: &Launched,
        sfd: RawFd,
        on_end: &mut dyn FnMut(Option<i32>, Option<i32>),
    ) -> RunEnd {
        let mut outs = std::mem::take(&mut self.outs);
        let mut buf = std::mem::take(&mut self.buf);
        let end = self.run_loop(child, sfd, on_end, &mut outs, &mut buf);
        self.outs = outs;
        self.buf = buf;
        end
    }

    fn run_loop(
        &mut self,
        child: &Launched,
        sfd: RawFd,
        on_end: &mut dyn FnMut(Option<i32>, Option<i32>),
        outs: &mut Vec<(OwnedFd, Dest)>,
        buf: &mut Vec<u8>,
    ) -> RunEnd {
        let listener_fd = self.registration.listener.as_raw_fd();
        let mut released = false;
        loop {
            let mut fds = vec![
                libc::pollfd { fd: child.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: sfd, events: libc::POLLIN, revents: 0 },
                libc::pollfd {
                    fd: if self.chan_open { self.chan.raw_fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd { fd: listener_fd, events: libc::POLLIN, revents: 0 },
            ];
            fds.extend(outs.iter().map(|(fd, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            let own_quiet = self.stop_deadline.is_none() && !released;
            // One more millisecond for PID 1's quiet: poll(2) counts whole milliseconds.
            let init_quiet = self.init_quiet_left().map(|d| d.as_millis() as i32 + 1);
            let timeout = match (self.stop_deadline, init_quiet) {
                (Some(d), _) => d.saturating_duration_since(Instant::now()).as_millis() as i32,
                (None, init) if released => init.unwrap_or(-1),
                (None, init) => {
                    init.map_or(crate::idle::QUIET_MS, |t| t.min(crate::idle::QUIET_MS))
                }
            };
            // SAFETY: poll over valid fds owned by this function.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout) };
            if n < 0 {
                continue;
            }
            if n == 0 && self.stop_deadline.is_none() {
                self.hibernate_init_if_quiet();
                if own_quiet && timeout == crate::idle::QUIET_MS && self.monitor_may_hibernate() {
                    return RunEnd::Quiet;
                }
                // A quiet second after the start or the last event: unmap the code the start
                // path ran, so its page tables go (`idle`); it faults back in when needed.
                if own_quiet && timeout == crate::idle::QUIET_MS {
                    crate::idle::release_heap();
                    let _ = crate::idle::release_code_pages();
                    released = true;
                }
                continue;
            }
            released = false;
            if let Some(d) = self.stop_deadline {
                if Instant::now() >= d {
                    tracing::warn!(isc = %self.spec.name, "stop timeout expired: killing the ISC");
                    // SAFETY: SIGKILL to our own child through its pidfd.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            child.pidfd.as_raw_fd(),
                            libc::SIGKILL,
                            0usize,
                            0,
                        )
                    };
                    self.stop_deadline = None;
                }
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.on_signal(sfd);
            }
            if fds[2].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                self.on_message(on_end);
            }
            if fds[3].revents & libc::POLLIN != 0 {
                self.on_client();
            }
            let mut closed = vec![];
            for (i, (fd, dest)) in outs.iter().enumerate() {
                let rev = fds[4 + i].revents;
                if rev & libc::POLLIN != 0 {
                    if !relay(fd.as_raw_fd(), dest, buf) {
                        closed.push(i);
                    }
                } else if rev & (libc::POLLHUP | libc::POLLERR) != 0 {
                    closed.push(i);
                }
            }
            for i in closed.into_iter().rev() {
                outs.remove(i);
            }
            self.hibernate_init_if_quiet();
            if fds[0].revents & libc::POLLIN != 0 {
                // Drain what is left: the exit message and the last output.
                while self.chan_has_data() && self.on_message(on_end) {}
                for (fd, dest) in outs.iter() {
                    while relay(fd.as_raw_fd(), dest, buf) {}
                }
                crate::timing::mark("PID 1 gone");
                return RunEnd::Exited(wait_pidfd(&child.pidfd));
            }
        }
    }

    fn chan_has_data(&self) -> bool {
        if !self.chan_open {
            return false;
        }
        let mut p = libc::pollfd { fd: self.chan.raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: zero-timeout poll on our channel fd.
        unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLIN != 0 }
    }

    fn on_signal(&mut self, sfd: RawFd) {
        // SAFETY: a plain C struct for which all-zero bytes are a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: reading one siginfo record from our non-blocking signalfd.
        while unsafe {
            libc::read(
                sfd,
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        } > 0
        {
            let signo = info.ssi_signo as i32;
            if matches!(signo, libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT) {
                self.request_stop();
            }
        }
    }

    fn request_stop(&mut self) {
        if self.stop_deadline.is_none() {
            tracing::info!(isc = %self.spec.name, timeout_s = self.spec.stop_timeout.as_secs_f64(), "stopping: SIGTERM to the service");
            let _ = self.chan.send(&ToInit::Signal { signo: libc::SIGTERM });
            self.stop_deadline = Some(Instant::now() + self.spec.stop_timeout);
        }
    }

    /// Handles one message; false once PID 1's end is closed.
    fn on_message(&mut self, on_end: &mut dyn FnMut(Option<i32>, Option<i32>)) -> bool {
        match self.chan.recv::<FromInit>() {
            Ok(Some(FromInit::ServiceExited { code, signal, alone })) => {
                crate::timing::mark("service exit reported by PID 1");
                self.exited = Some((code, signal));
                if alone && !self.ended_reported {
                    self.ended_reported = true;
                    on_end(code, signal);
                }
            }
            Ok(Some(FromInit::ProbeResult { id, outcome })) => {
                self.init_busy_at = Instant::now();
                self.on_probe_result(id, outcome)
            }
            Ok(Some(FromInit::HibernateFailed { errno })) => {
                let error = io::Error::from_raw_os_error(errno);
                tracing::warn!(isc = %self.spec.name, %error, "PID 1 could not exec the hibernating init; it stays whole (~180 KiB more per idle ISC)");
                self.init_hibernating = false;
                self.hibernation_works = false;
            }
            Ok(Some(FromInit::WakeFailed { errno })) => {
                let error = io::Error::from_raw_os_error(errno);
                tracing::warn!(isc = %self.spec.name, %error, "PID 1 could not exec isc for probes");
                self.init_hibernating = true;
                let message = format!("PID 1 could not exec isc to run the probes: {error}");
                for mut p in self.pending.drain(..) {
                    let _ = respond(
                        &mut p.client,
                        &ControlResponse::Error { message: message.clone() },
                    );
                }
            }
            Ok(Some(other)) => tracing::warn!(?other, "unexpected message from PID 1"),
            Ok(None) => {
                self.chan_open = false;
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "control channel"),
        }
        true
    }

    fn on_probe_result(&mut self, id: u64, outcome: ProbeOutcome) {
        let Some(i) = self.pending.iter().position(|p| p.waiting.contains(&id)) else { return };
        let p = &mut self.pending[i];
        p.waiting.retain(|w| *w != id);
        p.outcomes.push((id, outcome));
        if p.waiting.is_empty() {
            let mut p = self.pending.swap_remove(i);
            p.outcomes.sort_by_key(|(id, _)| *id);
            let outcomes = p.outcomes.into_iter().map(|(_, o)| o).collect();
            let _ = respond(&mut p.client, &ControlResponse::Probes { outcomes });
        }
    }

    fn on_client(&mut self) {
        let Ok((stream, _)) = self.registration.listener.accept() else { return };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut stream = stream;
        match serde_json::from_str::<ControlRequest>(&line) {
            Ok(ControlRequest::State) => {
                let resp = match self.registration.read() {
                    Ok(state) => ControlResponse::State { state },
                    Err(e) => ControlResponse::Error { message: e.to_string() },
                };
                let _ = respond(&mut stream, &resp);
            }
            Ok(ControlRequest::Stop) => {
                self.request_stop();
                let _ = respond(&mut stream, &ControlResponse::Stopping);
            }
            Ok(ControlRequest::Probe { names }) if !names.is_empty() => {
                self.init_busy_at = Instant::now();
                if let Err(e) = self.wake_init() {
                    let message = format!("waking PID 1 for the probes: {e}");
                    let _ = respond(&mut stream, &ControlResponse::Error { message });
                    return;
                }
                // Probes run one after another in PID 1's probe children; results are
                // collected in order of arrival and returned together.
                let ids: Vec<u64> = names
                    .iter()
                    .map(|_| {
                        self.next_probe += 1;
                        self.next_probe
                    })
                    .collect();
                for (id, name) in ids.iter().zip(&names) {
                    if self.chan.send(&ToInit::Probe { id: *id, name: name.clone() }).is_err() {
                        let _ = respond(
                            &mut stream,
                            &ControlResponse::Error { message: "PID 1 is gone".into() },
                        );
                        return;
                    }
                }
                self.pending.push(PendingProbe { client: stream, waiting: ids, outcomes: vec![] });
            }
            Ok(ControlRequest::Probe { .. }) => {
                let _ = respond(
                    &mut stream,
                    &ControlResponse::Error { message: "no probes named".into() },
                );
            }
            Err(e) => {
                let _ = respond(
                    &mut stream,
                    &ControlResponse::Error { message: format!("bad request: {e}") },
                );
            }
        }
    }
}

impl Supervisor<'_> {
    /// Nothing is outstanding and PID 1 is not about to be sent to sleep: the monitor itself
    /// may hibernate.
    fn monitor_may_hibernate(&self) -> bool {
        self.monitor_hibernation_works
            && self.chan_open
            && self.pending.is_empty()
            && self.exited.is_none()
            && self.stop_deadline.is_none()
            && self.init_quiet_left().is_none()
    }

    /// How long until PID 1 has been quiet long enough to hibernate (zero: now); `None` when
    /// it is not to hibernate (it does already, it cannot, a probe is outstanding, the ISC
    /// ends or is being stopped).
    fn init_quiet_left(&self) -> Option<Duration> {
        if self.init_hibernating
            || !self.hibernation_works
            || !self.chan_open
            || !self.pending.is_empty()
            || self.exited.is_some()
            || self.stop_deadline.is_some()
        {
            return None;
        }
        let quiet = Duration::from_millis(crate::idle::QUIET_MS as u64);
        Some(quiet.saturating_sub(self.init_busy_at.elapsed()))
    }

    /// PID 1 quiet for a second, no probe outstanding: it becomes the tiny init.
    fn hibernate_init_if_quiet(&mut self) {
        if self.init_quiet_left() != Some(Duration::ZERO) {
            return;
        }
        let sent = crate::hibernate::tiny_init().map_err(|e| e.to_string()).and_then(|exe| {
            crate::fdpass::send_with_fds(self.chan, &ToInit::Hibernate, &[exe.as_raw_fd()])
                .map_err(|e| e.to_string())
        });
        match sent {
            Ok(()) => self.init_hibernating = true,
            Err(error) => {
                tracing::warn!(isc = %self.spec.name, %error, "PID 1 cannot hibernate; it stays whole (~180 KiB more per idle ISC)");
                self.hibernation_works = false;
            }
        }
    }

    /// Before probes: a hibernating PID 1 execs the whole isc again (a copy of this binary).
    fn wake_init(&mut self) -> Result<(), String> {
        if !self.init_hibernating {
            return Ok(());
        }
        let exe = crate::hibernate::whole_isc().map_err(|e| e.to_string())?;
        crate::fdpass::send_with_fds(self.chan, &ToInit::Wake, &[exe.as_raw_fd()])
            .map_err(|e| e.to_string())?;
        self.init_hibernating = false;
        Ok(())
    }
}

fn respond(stream: &mut UnixStream, resp: &ControlResponse) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).expect("response serializes");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Copies what is available from `from` to `to`; false on EOF or error.
fn relay(from: RawFd, to: &Dest, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    // SAFETY: read writes at most `capacity` bytes into the buffer's allocation.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.capacity()) };
    if n <= 0 {
        return false;
    }
    // SAFETY: the kernel initialised the first n bytes (n <= capacity).
    unsafe { buf.set_len(n as usize) };
    to.write(buf);
    let _ = io::stdout().flush();
    true
}

/// A pipe's capacity: one read empties it. Allocated once per monitor and filled by the
/// kernel only (never zeroed), so an idle monitor keeps no 64 KiB of dirty stack or heap.
pub(crate) const RELAY_BUF: usize = 64 * 1024;
