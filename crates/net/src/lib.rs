//! isc-net: the network boundary of an ISC (DESIGN.md §5).
pub mod alloc;
pub mod link;
pub mod nflog;
pub mod nft;
pub mod policy;
pub mod tc;
