//! isc-net
