//! isc-engine: launching one Immutable Service Container.
//!
//! The process model and hardening order are DESIGN.md §3: the monitor prepares (UID range,
//! seccomp BPF from cache, pipes, control channel), clones the child into new user, mount, PID,
//! net, UTS and IPC namespaces, writes its id maps, runs the start hooks (cgroup, network), and
//! releases it. The child builds its root, drops to the service's credentials, applies
//! Landlock, loads seccomp last, and becomes PID 1 of the ISC, which forks the one service.

pub mod beside;
pub mod channel;
pub mod creds;
pub mod fdpass;
pub mod finisher;
pub mod hibernate;
pub mod idle;
pub mod init;
pub mod logfile;
pub mod lsm;
pub mod monitor;
pub mod monitor_hibernate;
pub mod netns;
pub mod probe;
pub mod probe_battery;
pub mod probe_stress;
pub mod rootfs;
pub mod seccomp;
mod seccomp_table;
pub mod spec;
pub mod state;
mod supervisor;
pub mod syscall;
pub mod timing;

pub use logfile::Output;
pub use monitor::{run, ExitRecord, HookChain, MonitorError, NoHooks, RunOptions, StartHooks};
pub use monitor_hibernate::resume;
pub use spec::{BindMount, IscSpec, RlimitSpec, TmpfsMount, Weakening};
