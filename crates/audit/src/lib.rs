//! isc-audit
