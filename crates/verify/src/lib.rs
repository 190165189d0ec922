//! isc-verify
