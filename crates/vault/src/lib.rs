//! isc-vault
