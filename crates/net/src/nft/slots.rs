//! Denial logging by lease slot: chains that exist per *slot*, made in blocks of [`BLOCK`]
//! slots, so that starting or stopping an ISC never adds or removes a chain or a jump.
//!
//! Why: every ISC's denials are logged with its own rate limit (per direction) to the
//! Dock-wide NFLOG group and to a group that its monitor alone reads
//! ([`audit_nflog_group`]). An nft `log` statement's group is a constant, so that needs one
//! chain per ISC; reaching per-ISC chains through a verdict map with per-ISC `goto`
//! elements made every start and stop re-validate the whole table: the kernel sets
//! `NFT_VALIDATE_NEED` for any new element whose verdict is a jump or goto (and any new rule
//! with an expression that has a `validate` op), and then walks every chain reachable from a
//! base chain at commit (net/netfilter/nf_tables_api.c: `nft_add_set_elem`,
//! `nf_tables_newrule`, `nf_tables_validate` -> `nft_table_validate`).
//!
//! So the chains and the `goto` elements are per slot and static: `isc_s<n>` (per direction:
//! limit, log to both groups; then drop), reached through the map `isc_log` (`mark :
//! verdict`; the slot, or the slot with [`IN_BIT`], for traffic to the ISC). An ISC's only
//! logging objects are the *data* elements `ifname : slot` in `isc_slot` and `ifname : slot |
//! IN_BIT` in `isc_slot_in`; the shared deny chains do `meta mark set iifname map @isc_slot
//! meta mark vmap @isc_log` (`oifname`, `isc_slot_in` for traffic to it) in one rule (no
//! entry: the rule stops there, and the next one drops). A data element sets no validation
//! flag. Blocks are added when the first ISC of a block starts
//! (one validation then per [`BLOCK`] slots) and removed only by a reconcile, which makes
//! just the blocks of the running ISCs.
//!
//! The slot is the ISC's lease slot, unique among running ISCs and recovered from its IPv4
//! address, so a reconcile derives the same slot from the recorded policy. Rewriting the
//! packet mark is harmless here: every packet that reaches it is dropped right after.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::rules::{s, RulesConfig, LOG, MARKER_ELEM};
use super::{m, verdict, Batch, Elem, Field, KeyType, Op, Stmt, Val, Verdict};

/// Slots per block of logging chains.
pub const BLOCK: u32 = 64;

/// The mark bit that says "traffic to the ISC" (`isc_slot_in` holds the slot with it set).
pub const IN_BIT: u32 = 0x1_0000;

/// The lease slot of the ISC whose IPv4 address is `addr_v4` (`prefix base + 2 * slot + 1`).
pub fn slot_of(v4_prefix: Ipv4Net, addr_v4: Ipv4Addr) -> u32 {
    (u32::from(addr_v4).wrapping_sub(u32::from(v4_prefix.network())) / 2) & 0x7fff
}

/// The NFLOG group that only this ISC's denials go to (besides the Dock-wide
/// `nflog_group`), read by its monitor for the audit trail. nfnetlink_log lets exactly one
/// socket bind a group (a second binder gets EPERM, checked on 6.18), so concurrent monitors
/// cannot share one group: each ISC gets `0x8000 + its lease slot`. The slot is unique among
/// the ISCs of a Dock and is recovered from the ISC's IPv4 address (`prefix base + 2 * slot
/// + 1`), so reconcile derives the same group from the policy alone.
pub fn audit_nflog_group(v4_prefix: Ipv4Net, addr_v4: Ipv4Addr) -> u16 {
    0x8000 | slot_of(v4_prefix, addr_v4) as u16
}

/// The logging chain of `slot` (both directions: one chain per slot, because every commit
/// visits every chain of the table once, `nf_tables_commit` step 2).
pub fn slot_chain(slot: u32) -> String {
    format!("isc_s{slot}")
}

/// The block that holds `slot`.
pub fn block_of(slot: u32) -> u32 {
    slot / BLOCK
}

fn block_ops_unmarked(cfg: &RulesConfig, block: u32) -> Batch {
    let mut b = Batch::default();
    let burst = cfg.log_per_second.saturating_mul(2).max(1);
    for slot in block * BLOCK..(block + 1) * BLOCK {
        let group = 0x8000 | (slot & 0x7fff) as u16;
        let chain = slot_chain(slot);
        b.push(Op::AddChain { name: chain.clone(), base: None });
        b.push(Op::FlushChain(chain.clone()));
        // One rule (one limit) per direction: the direction bit of the mark must match
        // exactly, so a packet over one direction's limit does not use the other's.
        for (dir, bit) in [("out", 0), ("in", IN_BIT)] {
            let prefix = format!("isc:s{slot}:{dir}");
            let dir_bit = Field::Masked(Box::new(Field::Mark), Val::Mark(IN_BIT));
            b.rule(
                &chain,
                vec![
                    m(dir_bit, Val::Mark(bit)),
                    Stmt::Limit { per_second: cfg.log_per_second.max(1), burst },
                    Stmt::Log { prefix: prefix.clone(), group: cfg.nflog_group },
                    Stmt::Log { prefix, group },
                ],
            );
        }
        b.rule(&chain, vec![verdict(Verdict::Drop)]);
        let to = |mark: u32| Elem::Map(vec![Val::Mark(mark)], Verdict::Goto(chain.clone()));
        b.push(Op::AddElems { set: LOG.into(), elems: vec![to(slot), to(slot | IN_BIT)] });
    }
    b
}

/// Name of the set whose existence says "block `block` of this configuration and isc version
/// is in place" (made with the block; see `rules::base_marker` for the idea).
pub fn block_marker(cfg: &RulesConfig, block: u32) -> String {
    let text = block_ops_unmarked(cfg, block).to_text();
    format!("isc_blk{block}_{:016x}", super::rules::fnv1a(text.as_bytes()))
}

/// The chains, rules and map entries of `block` and its marker. Idempotent (chains are added,
/// flushed and refilled; the map entries are the same each time).
pub fn block_ops(cfg: &RulesConfig, block: u32) -> Vec<Op> {
    let mut ops = block_ops_unmarked(cfg, block).ops;
    let marker = block_marker(cfg, block);
    ops.push(Op::AddSet { name: marker.clone(), key: vec![KeyType::Ifname], interval: false });
    ops.push(Op::AddElems { set: marker, elems: vec![Elem::Key(vec![s(MARKER_ELEM)])] });
    ops
}
