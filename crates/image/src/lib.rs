//! isc-image
