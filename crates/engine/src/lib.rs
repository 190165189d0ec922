//! isc-engine
