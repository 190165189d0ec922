//! isc-cgroup
