//! A small nftables model for the `inet isc` table, rendered two ways: JSON for `nft -j -f -`
//! (built from the `nftables` crate's typed schema) and nft script text for `--dry-run` logs.
//!
//! Only what isc emits is modelled. Everything is written, never read back: objects are added
//! and deleted by name (STACK.md §4; reading rule handles back is what broke netavark twice).
//! The elements of one ISC also go straight to the kernel as an nfnetlink batch (`netlink`).

pub mod egress;
mod json;
pub mod netlink;
pub mod rules;
mod runner;
pub mod slots;
mod text;

use std::net::IpAddr;

use ipnet::IpNet;

pub use runner::{NftCli, NftError, NftRunner};

use crate::policy::Proto;

/// Name of the table isc owns (family `inet`).
pub const TABLE: &str = "isc";

/// Netfilter hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Prerouting.
    Prerouting,
    /// Input.
    Input,
    /// Forward.
    Forward,
    /// Output.
    Output,
    /// Postrouting.
    Postrouting,
}

/// Kind of base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// `type filter`.
    Filter,
    /// `type nat`.
    Nat,
}

/// Base chain parameters (policy is always accept: other tables may hook the same points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// Filter or NAT.
    pub kind: ChainKind,
    /// Hook.
    pub hook: Hook,
    /// Priority.
    pub prio: i32,
}

/// Data types of set keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ipv4_addr`.
    Ipv4,
    /// `ipv6_addr`.
    Ipv6,
    /// `inet_proto`.
    Proto,
    /// `inet_service`.
    Service,
    /// `ifname`.
    Ifname,
    /// `mark` (32 bits, host byte order).
    Mark,
}

/// A value in a set element or a rule's right-hand side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// An address or prefix.
    Net(IpNet),
    /// A single address.
    Addr(IpAddr),
    /// A protocol.
    Proto(Proto),
    /// A port.
    Port(u16),
    /// A string (interface name, possibly with a trailing `*` wildcard; a ct state; a type name).
    Str(String),
    /// An anonymous set of strings.
    Strs(Vec<String>),
    /// A named set reference (`@name`).
    SetRef(String),
    /// A packet mark.
    Mark(u32),
}

/// Packet fields the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `ip saddr`.
    IpSaddr,
    /// `ip daddr`.
    IpDaddr,
    /// `ip6 saddr`.
    Ip6Saddr,
    /// `ip6 daddr`.
    Ip6Daddr,
    /// `meta l4proto`.
    L4proto,
    /// `th dport`.
    ThDport,
    /// `iifname`.
    Iifname,
    /// `oifname`.
    Oifname,
    /// `ct state`.
    CtState,
    /// `fib daddr type`.
    FibDaddrType,
    /// `icmpv6 type`.
    Icmpv6Type,
    /// `meta mark`.
    Mark,
    /// `FIELD & MASK` (an address under a prefix mask, a mark under a bit mask).
    Masked(Box<Field>, Val),
    /// Concatenation of fields.
    Concat(Vec<Field>),
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
    /// `return` (back to the calling chain).
    Return,
}

/// One statement of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `FIELD == VAL` (`eq = true`) or `FIELD != VAL`.
    Match { field: Field, eq: bool, val: Val },
    /// `FIELD vmap @MAP`.
    Vmap { field: Field, map: String },
    /// `limit rate N/second burst B packets`.
    Limit { per_second: u32, burst: u32 },
    /// `log prefix P group G`.
    Log { prefix: String, group: u16 },
    /// `dnat ip|ip6 to ADDR:PORT`.
    Dnat { addr: IpAddr, port: u16 },
    /// `masquerade`.
    Masquerade,
    /// `meta mark set FIELD map @MAP`: no match (the rule stops) when FIELD is not in MAP.
    MarkFromMap { field: Field, map: String },
    /// `dnat ip|ip6 to KEY map @ADDR_MAP : KEY map @PORT_MAP` (two data maps: nft 1.0.6
    /// crashes on a JSON map declaration whose data is a concatenation).
    DnatMap { v6: bool, key: Field, addr_map: String, port_map: String },
    /// A verdict.
    Verdict(Verdict),
}

/// A set element or map entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    /// A key (a concatenation when it has more than one value).
    Key(Vec<Val>),
    /// A map entry `key : verdict`.
    Map(Vec<Val>, Verdict),
    /// A data map entry `key : value`.
    Data(Vec<Val>, Val),
}

impl Elem {
    /// The key alone (what a `delete element` names).
    pub fn key(&self) -> &[Val] {
        match self {
            Elem::Key(k) | Elem::Map(k, _) | Elem::Data(k, _) => k,
        }
    }
}

/// One command of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add table inet isc`.
    AddTable,
    /// `delete table inet isc`.
    DeleteTable,
    /// `add chain` (regular when `base` is `None`).
    AddChain { name: String, base: Option<BaseChain> },
    /// `flush chain`.
    FlushChain(String),
    /// `delete chain`.
    DeleteChain(String),
    /// `add set` with the given key type (concatenated if several).
    AddSet { name: String, key: Vec<KeyType>, interval: bool },
    /// `flush set`.
    FlushSet(String),
    /// `delete set`.
    DeleteSet(String),
    /// `add map NAME { type KEY : verdict }`.
    AddVmap { name: String, key: Vec<KeyType> },
    /// `add map NAME { type KEY : DATA }` (a data map).
    AddMap { name: String, key: Vec<KeyType>, data: KeyType },
    /// `add rule`.
    AddRule { chain: String, stmts: Vec<Stmt> },
    /// `add element`.
    AddElems { set: String, elems: Vec<Elem> },
    /// `delete element`.
    DeleteElems { set: String, elems: Vec<Elem> },
}

/// An ordered list of commands applied as one kernel transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The commands, in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// Append one command.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Append a rule to `chain`.
    pub fn rule(&mut self, chain: &str, stmts: Vec<Stmt>) {
        self.ops.push(Op::AddRule { chain: chain.to_string(), stmts });
    }

    /// The JSON document for `nft -j -f -`.
    pub fn to_json(&self) -> serde_json::Value {
        json::batch_to_json(self)
    }

    /// The same batch as an nft script, for logs and `--dry-run`.
    pub fn to_text(&self) -> String {
        text::batch_to_text(self)
    }

    /// Apply the batch atomically with `runner`.
    pub fn apply(&self, runner: &dyn NftRunner) -> Result<(), NftError> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let doc = serde_json::to_string(&self.to_json()).expect("nft JSON serialises");
        tracing::debug!(ops = self.ops.len(), "applying nftables batch");
        runner.apply_json(&doc)
    }
}

/// Shorthand for a positive match.
pub fn m(field: Field, val: Val) -> Stmt {
    Stmt::Match { field, eq: true, val }
}

/// Shorthand for a negative match.
pub fn not(field: Field, val: Val) -> Stmt {
    Stmt::Match { field, eq: false, val }
}

/// Shorthand for a verdict statement.
pub fn verdict(v: Verdict) -> Stmt {
    Stmt::Verdict(v)
}
