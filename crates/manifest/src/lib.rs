//! isc-manifest
