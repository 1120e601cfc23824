//! A model of the arbiter protocol, checked exhaustively with stateright.
//!
//! Two data nodes and the arbiter's compare-and-swap register are actors on
//! a network that loses and reorders messages (a resend can put a second
//! copy in flight); a data node may crash and restart with only its
//! durable state; every timer (client write, heartbeat, stream, "standby
//! lost", failover) may fire at any moment, so only safety is checked,
//! plus reachability of the interesting states (a failover, a write
//! acknowledged after it).
//! With `Cfg::switchover`, a standby may also start a planned switchover at
//! any moment: it fences the primary with the next epoch; the primary
//! stops writing and, once the standby's acks cover its whole log, steps
//! down for it and answers with its last LSN; the standby takes over
//! through the register if it holds that LSN, or, the answer lost, when
//! the old primary's next message names it leader of the next epoch.
//! The rules modelled are those of docs/DESIGN.md, "The arbiter" and
//! "Planned switchover"; the
//! model is standalone: it models the rules, not walrep's code. Each rule
//! has a switch (`Mutant`) that breaks it, and a test per switch shows the
//! checker finds the counterexample the rule exists to prevent.
//!
//! `cargo test --test model -- --nocapture` prints the state counts.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Instant;

use stateright::actor::{
    Actor, ActorModel, ActorModelState, Id, LossyNetwork, Network, Out, model_timeout,
};
use stateright::{Checker, Expectation, HasDiscoveries, Model};

mod standbys;

/// The data nodes are actors 0 and 1 (the cluster's `members`); the
/// register is actor 2. The client is not an actor: a primary's timer
/// offers it a write, and what a primary acknowledges is recorded in a
/// ghost variable only the properties read.
const NODES: [u8; 2] = [0, 1];
const REGISTER: usize = 2;

/// Bounds: a log holds at most this many records (so the client makes at
/// most that many writes per primary), and no promotion goes past this
/// epoch (bootstrap is epoch 1, a failover 2, a failback 3).
const MAX_LOG: usize = 2;
const MAX_EPOCH: u8 = 3;

/// One broken rule, to show that the checker catches its consequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mutant {
    /// The rules as designed.
    None,
    /// A primary that loses its standby drops it from its own view of the
    /// sync set and acknowledges alone, without the register's CAS.
    SoloWithoutCas,
    /// A standby whose primary is silent promotes whether or not it is in
    /// the register's sync set.
    PromoteOutsideSyncSet,
    /// A primary puts a standby back in the sync set (and tells it it is
    /// eligible) as soon as it answers, before it has caught up.
    RejoinSyncSetBeforeCaughtUp,
    /// Nodes started as primary take epoch 1 and write at once, without
    /// creating the register.
    BootstrapWithoutRegister,
    /// A witness that lost its file accepts a create at or above the
    /// highest epoch reported so far, without waiting for every member.
    CreateRegisterOverHigherEpoch,
    /// A primary goes on acknowledging alone while its CAS putting the
    /// caught-up standby back in the sync set is on its way: the standby
    /// was caught up when the CAS was sent, not when it took effect.
    AcknowledgeAloneWhileAddingStandby,
    /// A primary whose CAS failed takes the register's value for a newer
    /// view of its own, whatever its epoch, instead of being fenced.
    NotFencedByFailedCas,
    /// A primary fenced by a planned switchover steps down at once, before
    /// the standby's acks show it holds everything the primary wrote.
    SwitchoverAnswerBeforeCaughtUp,
    /// A primary fenced by a planned switchover answers, but does not step
    /// down: it goes on acknowledging writes in its epoch.
    OldPrimaryWritesOnAfterSwitchover,
}

/// A log record: the epoch it was written in and the node that wrote it
/// (the writer tells two records of one epoch apart, which only a broken
/// rule can produce). Its LSN is its position in the log, from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Rec {
    epoch: u8,
    by: u8,
}

/// The arbiter's register. `sync` is a bit set of node ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Reg {
    version: u8,
    epoch: u8,
    primary: u8,
    sync: u8,
}

impl Reg {
    fn has(&self, node: u8) -> bool {
        self.sync & (1 << node) != 0
    }

    /// The register after `node`'s promotion, whatever its cause (a
    /// failover, a planned switchover): the next epoch, `node` primary, an
    /// empty sync set.
    fn promoting(self, node: u8) -> Reg {
        Reg {
            version: self.version + 1,
            epoch: self.epoch + 1,
            primary: node,
            sync: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Msg {
    /// Node → register: replace the register by `new` if it holds
    /// `expect` (`None`: no register yet). `epoch` is the sender's.
    Cas {
        epoch: u8,
        expect: Option<Reg>,
        new: Reg,
    },
    /// Register → node: the answer, with the request it answers and the
    /// register's value after it.
    CasReply {
        expect: Option<Reg>,
        new: Reg,
        ok: bool,
        cur: Option<Reg>,
    },
    /// Primary → standby: its log (a stream from the divergence point
    /// abstracted as the whole log) and where its epoch began (`base`: its
    /// log's length when it was promoted).
    Append { epoch: u8, base: u8, log: Vec<Rec> },
    /// Primary → standby: its view of the register, which tells the
    /// standby whether it is in the sync set, so eligible.
    Heartbeat { epoch: u8, reg: Reg },
    /// Standby → primary: "I hold your first `len` records durably".
    Ack { epoch: u8, len: u8 },
    /// Answer to a message from a lower epoch.
    Fence { epoch: u8 },
    /// Standby → primary: a planned switchover to the sender at `epoch`
    /// (the primary's plus one; not persisted by the sender yet).
    SwitchoverFence { epoch: u8 },
    /// Primary → standby: it stepped down to `epoch` led by the standby;
    /// its log held `last` records.
    SwitchoverFenced { epoch: u8, last: u8 },
    /// A standby → its peer: it is at `epoch`, led by `leader` (what the
    /// requests of its rejoin, and its refusal of a stale fence, say).
    Leads { epoch: u8, leader: u8 },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Timer {
    /// The client offers a write to whoever is primary.
    Write,
    /// A primary's heartbeat (which also puts a caught-up standby back
    /// in the sync set); a retry of a pending CAS.
    Heartbeat,
    /// A primary (re)sends its log to the standby.
    Stream,
    /// A primary's `sync_timeout` ran out with a write waiting.
    StandbyLost,
    /// A standby's `failover_timeout` ran out.
    Failover,
    /// The witness loses its file.
    LoseFile,
    /// A standby starts (or asks again for) a planned switchover to itself.
    Switchover,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Role {
    /// Started as primary of a fresh cluster: bootstrapping through the
    /// register.
    Init,
    Standby {
        leader: Option<u8>,
        /// Told by the primary, in this lifetime, that it is in the sync
        /// set.
        eligible: bool,
    },
    Primary {
        /// The log's length when this node became primary.
        base: u8,
        /// How much of our log the standby holds durably (its acks).
        matched: u8,
        /// Records up to here are committed.
        commit: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    Node(NodeState),
    Register(Witness),
}

/// The register's keeper (the witness); its state is all durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Witness {
    reg: Option<Reg>,
    /// Set when the witness has lost its file (which the model lets happen
    /// at most once): the highest epoch each member has reported since.
    /// It accepts no CAS until a create that no report contradicts.
    rebuilding: Option<[Option<u8>; 2]>,
    lost: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NodeState {
    /// Mirrors of the durable state.
    epoch: u8,
    log: Vec<Rec>,
    role: Role,
    /// The last register value this node learned (volatile).
    reg: Option<Reg>,
    /// The CAS this node is waiting for (volatile).
    pending: Option<(Option<Reg>, Reg)>,
    /// Ghost: the writes this node acknowledged to the client, as (lsn,
    /// record). Only the properties read it.
    acked: BTreeSet<(u8, Rec)>,
    /// The epoch of the planned switchover this standby runs (volatile).
    switching: Option<u8>,
    /// The epoch a planned switchover asked this primary to step down to;
    /// it writes nothing meanwhile (volatile).
    demotion: Option<u8>,
    /// Ghost: this primary took over by a planned switchover.
    by_switchover: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Storage {
    Node {
        epoch: u8,
        log: Vec<Rec>,
        acked: BTreeSet<(u8, Rec)>,
    },
    Register(Witness),
}

/// Where a check starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Start {
    /// A fresh cluster whose two nodes were both started as primary: no
    /// register, nothing on disk.
    Fresh,
    /// Just after bootstrap: node 0 is primary of epoch 1 with an empty
    /// sync set, node 1 its standby (not in the sync set yet).
    Bootstrapped,
    /// Just after a failover that node 0 has not heard of: it is still
    /// primary of epoch 1 and has acknowledged record 1 with node 1 in
    /// the sync set; node 1 is primary of epoch 2 through the register.
    FailedOver,
}

/// The register after node 1's promotion, in `Start::FailedOver`.
const FAILED_OVER: Reg = Reg {
    version: 3,
    epoch: 2,
    primary: 1,
    sync: 0,
};

/// The register as bootstrap leaves it.
const BOOTSTRAPPED: Reg = Reg {
    version: 1,
    epoch: 1,
    primary: 0,
    sync: 0,
};

#[derive(Clone)]
enum Arbiter {
    Node {
        mutant: Mutant,
        start: Start,
        /// Whether a standby may start a planned switchover.
        switchover: bool,
    },
    Register {
        mutant: Mutant,
        start: Start,
        /// Whether the witness may lose its file.
        may_lose_file: bool,
    },
}

fn other(me: u8) -> u8 {
    1 - me
}

impl NodeState {
    fn save(&self, o: &mut Out<Arbiter>) {
        o.save(Storage::Node {
            epoch: self.epoch,
            log: self.log.clone(),
            acked: self.acked.clone(),
        });
    }

    fn send_cas(&mut self, expect: Option<Reg>, new: Reg, o: &mut Out<Arbiter>) {
        self.pending = Some((expect, new));
        o.send(
            Id::from(REGISTER),
            Msg::Cas {
                epoch: self.epoch,
                expect,
                new,
            },
        );
    }

    /// Persists a higher epoch, then acts on it: a primary stops writing.
    fn adopt_epoch(&mut self, epoch: u8, leader: Option<u8>, o: &mut Out<Arbiter>) {
        debug_assert!(epoch > self.epoch);
        self.epoch = epoch;
        self.save(o);
        self.role = Role::Standby {
            leader,
            eligible: false,
        };
        self.pending = None;
        self.switching = None;
        self.demotion = None;
    }

    /// A successful CAS made us primary of `reg.epoch`: persist, then act.
    fn become_primary(&mut self, reg: Reg, o: &mut Out<Arbiter>) {
        if reg.epoch > self.epoch {
            self.epoch = reg.epoch;
            self.save(o);
        }
        let len = self.log.len() as u8;
        self.role = Role::Primary {
            base: len,
            matched: 0,
            commit: len,
        };
        self.reg = Some(reg);
        self.pending = None;
        self.by_switchover = self.switching == Some(reg.epoch);
        self.switching = None;
    }

    /// Whether the standby's flush is needed for a commit: it is in the
    /// sync set, or a CAS putting it there is on its way.
    fn standby_counts(&self, me: u8, mutant: Mutant) -> bool {
        let s = other(me);
        self.reg.is_some_and(|r| r.has(s))
            || (self.pending.is_some_and(|(_, new)| new.has(s))
                && mutant != Mutant::AcknowledgeAloneWhileAddingStandby)
    }

    /// Advances the commit point and acknowledges what this primary wrote.
    fn advance_commit(&mut self, me: u8, mutant: Mutant, o: &mut Out<Arbiter>) {
        let counts = self.standby_counts(me, mutant);
        let len = self.log.len() as u8;
        let epoch = self.epoch;
        let Role::Primary {
            matched, commit, ..
        } = &mut self.role
        else {
            return;
        };
        let reach = if counts { len.min(*matched) } else { len };
        if reach <= *commit {
            return;
        }
        for lsn in *commit + 1..=reach {
            let rec = self.log[usize::from(lsn) - 1];
            if rec.epoch == epoch {
                self.acked.insert((lsn, rec));
            }
        }
        *commit = reach;
        self.save(o);
    }

    /// Ends a planned step-down once the standby's acks cover our whole
    /// log: persist its epoch led by the standby, stop, and tell it our
    /// last LSN.
    fn try_finish_demotion(&mut self, me: u8, mutant: Mutant, o: &mut Out<Arbiter>) {
        let (Some(epoch), Role::Primary { matched, .. }) = (self.demotion, &self.role) else {
            return;
        };
        let last = self.log.len() as u8;
        if *matched < last && mutant != Mutant::SwitchoverAnswerBeforeCaughtUp {
            return;
        }
        if mutant == Mutant::OldPrimaryWritesOnAfterSwitchover {
            self.demotion = None;
        } else {
            self.adopt_epoch(epoch, Some(other(me)), o);
        }
        o.send(
            Id::from(usize::from(other(me))),
            Msg::SwitchoverFenced { epoch, last },
        );
    }

    /// Takes `epoch` (ours plus one), which the old primary handed us by
    /// stepping down, through the register, as a promotion.
    fn take_handed_epoch(&mut self, me: u8, epoch: u8, o: &mut Out<Arbiter>) {
        if let Some(reg) = self.reg.filter(|r| r.epoch == self.epoch) {
            self.switching = Some(epoch);
            self.send_cas(Some(reg), reg.promoting(me), o);
        }
    }

    fn send_append(&self, me: u8, o: &mut Out<Arbiter>) {
        if let Role::Primary { base, .. } = self.role {
            o.send(
                Id::from(usize::from(other(me))),
                Msg::Append {
                    epoch: self.epoch,
                    base,
                    log: self.log.clone(),
                },
            );
        }
    }

    /// A message from a primary of `epoch`: refuse it if the epoch is
    /// older than ours (false), else follow that primary.
    fn follow(&mut self, epoch: u8, from: u8, o: &mut Out<Arbiter>) -> bool {
        if epoch < self.epoch {
            o.send(
                Id::from(usize::from(from)),
                Msg::Fence { epoch: self.epoch },
            );
            return false;
        }
        if epoch > self.epoch {
            self.adopt_epoch(epoch, Some(from), o);
        }
        match self.role {
            // Another primary in our own epoch: only a broken rule makes
            // one; refuse it.
            Role::Primary { .. } => return false,
            Role::Init | Role::Standby { leader: None, .. } => {
                self.role = Role::Standby {
                    leader: Some(from),
                    eligible: false,
                };
                self.pending = None;
            }
            Role::Standby { .. } => {}
        }
        true
    }

    /// A register value learned from a failed CAS.
    fn learn(&mut self, me: u8, mutant: Mutant, cur: Reg, o: &mut Out<Arbiter>) {
        if mutant == Mutant::NotFencedByFailedCas && matches!(self.role, Role::Primary { .. }) {
            // Takes the answer for a stale view of its own register.
            self.reg = Some(cur);
            self.advance_commit(me, mutant, o);
            return;
        }
        if cur.epoch > self.epoch {
            if cur.primary == me {
                // Our promotion went through but its answer was lost.
                self.become_primary(cur, o);
            } else {
                self.adopt_epoch(cur.epoch, Some(cur.primary), o);
                self.reg = Some(cur);
            }
            return;
        }
        if cur.epoch < self.epoch {
            return;
        }
        match self.role {
            Role::Primary { .. } if cur.primary == me => {
                self.reg = Some(cur);
                self.advance_commit(me, mutant, o);
            }
            Role::Primary { .. } => {}
            Role::Init => {
                self.role = Role::Standby {
                    leader: Some(cur.primary),
                    eligible: false,
                };
                self.reg = Some(cur);
            }
            Role::Standby { .. } => self.reg = Some(cur),
        }
    }
}

/// Brings `mine` in line with a primary of `epoch` whose log is `theirs`
/// and whose epoch began after `base` records: drops our records after
/// the divergence point (a record the primary does not hold, or one of an
/// older epoch past `base`, which the primary can never hold), then takes
/// what we lack. A stale, shorter `theirs` leaves our newer records.
fn reconcile(mine: &mut Vec<Rec>, epoch: u8, base: u8, theirs: &[Rec]) {
    let mut keep = 0;
    while keep < mine.len() {
        let r = mine[keep];
        let diverged = match theirs.get(keep) {
            Some(t) => *t != r,
            None => keep >= usize::from(base) && r.epoch < epoch,
        };
        if diverged {
            break;
        }
        keep += 1;
    }
    mine.truncate(keep);
    if theirs.len() > mine.len() {
        mine.extend_from_slice(&theirs[mine.len()..]);
    }
}

impl Arbiter {
    fn mutant(&self) -> Mutant {
        match self {
            Arbiter::Node { mutant, .. } | Arbiter::Register { mutant, .. } => *mutant,
        }
    }
}

impl Actor for Arbiter {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;
    type Storage = Storage;
    type Random = ();

    fn on_start(&self, id: Id, storage: &Option<Storage>, o: &mut Out<Self>) -> State {
        let me = usize::from(id) as u8;
        match self {
            Arbiter::Register {
                start,
                may_lose_file,
                ..
            } => {
                let w = match (storage, start) {
                    (Some(Storage::Register(w)), _) => *w,
                    (_, start) => {
                        let w = Witness {
                            reg: match start {
                                Start::Fresh => None,
                                Start::Bootstrapped => Some(BOOTSTRAPPED),
                                Start::FailedOver => Some(FAILED_OVER),
                            },
                            rebuilding: None,
                            lost: false,
                        };
                        o.save(Storage::Register(w));
                        w
                    }
                };
                if *may_lose_file && !w.lost {
                    o.set_timer(Timer::LoseFile, model_timeout());
                }
                State::Register(w)
            }
            Arbiter::Node {
                mutant,
                start,
                switchover,
            } => {
                for t in [
                    Timer::Write,
                    Timer::Heartbeat,
                    Timer::Stream,
                    Timer::StandbyLost,
                    Timer::Failover,
                ] {
                    o.set_timer(t, model_timeout());
                }
                if *switchover {
                    o.set_timer(Timer::Switchover, model_timeout());
                }
                let (epoch, log, acked) = match storage {
                    Some(Storage::Node { epoch, log, acked }) => {
                        (*epoch, log.clone(), acked.clone())
                    }
                    _ => (0, Vec::new(), BTreeSet::new()),
                };
                let mut s = NodeState {
                    epoch,
                    log,
                    role: Role::Standby {
                        leader: None,
                        eligible: false,
                    },
                    reg: None,
                    pending: None,
                    acked,
                    switching: None,
                    demotion: None,
                    by_switchover: false,
                };
                if storage.is_none() && *start == Start::FailedOver {
                    let a = Rec { epoch: 1, by: 0 };
                    s.log = vec![a];
                    if me == 0 {
                        s.epoch = 1;
                        s.reg = Some(Reg {
                            version: 2,
                            epoch: 1,
                            primary: 0,
                            sync: 1 << 1,
                        });
                        s.role = Role::Primary {
                            base: 0,
                            matched: 1,
                            commit: 1,
                        };
                        s.acked.insert((1, a));
                    } else {
                        s.become_primary(FAILED_OVER, o);
                    }
                    s.save(o);
                } else if storage.is_none() && *start == Start::Bootstrapped {
                    s.epoch = 1;
                    s.reg = Some(BOOTSTRAPPED);
                    if me == BOOTSTRAPPED.primary {
                        s.become_primary(BOOTSTRAPPED, o);
                    } else {
                        s.role = Role::Standby {
                            leader: Some(BOOTSTRAPPED.primary),
                            eligible: false,
                        };
                    }
                    s.save(o);
                } else if epoch == 0 {
                    if *mutant == Mutant::BootstrapWithoutRegister {
                        let reg = Reg {
                            version: 1,
                            epoch: 1,
                            primary: me,
                            sync: 0,
                        };
                        s.become_primary(reg, o);
                    } else {
                        s.role = Role::Init;
                        let new = Reg {
                            version: 1,
                            epoch: 1,
                            primary: me,
                            sync: 0,
                        };
                        s.send_cas(None, new, o);
                    }
                }
                State::Node(s)
            }
        }
    }

    fn on_msg(&self, id: Id, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let me = usize::from(id) as u8;
        let from = usize::from(src) as u8;
        let mutant = self.mutant();
        if let State::Register(w) = &**state {
            let mut w = *w;
            if let Msg::Cas { epoch, expect, new } = msg {
                let mut ok = w.reg == expect;
                if let Some(reports) = &mut w.rebuilding {
                    let report = &mut reports[usize::from(from)];
                    *report = (*report).max(Some(epoch));
                    // Rebuilt from the members' highest epoch, once every
                    // member has reported: never guessed.
                    let all_reported = reports.iter().all(Option::is_some);
                    let highest = reports.iter().flatten().max().copied().unwrap_or(0);
                    ok = ok
                        && (all_reported || mutant == Mutant::CreateRegisterOverHigherEpoch)
                        && new.epoch >= highest;
                }
                if ok {
                    w.reg = Some(new);
                    w.rebuilding = None;
                }
                let cur = w.reg;
                if State::Register(w) != **state {
                    *state.to_mut() = State::Register(w);
                    o.save(Storage::Register(w));
                }
                o.send(
                    src,
                    Msg::CasReply {
                        expect,
                        new,
                        ok,
                        cur,
                    },
                );
            }
            return;
        }
        let State::Node(s) = &**state else {
            return;
        };
        let mut s = s.clone();
        match msg {
            Msg::CasReply {
                expect,
                new,
                ok,
                cur,
            } => {
                if s.pending != Some((expect, new)) {
                    return; // an answer to a request we no longer wait for
                }
                s.pending = None;
                if ok {
                    match s.role {
                        _ if new.primary != me => {}
                        Role::Primary { .. } if new.epoch == s.epoch => {
                            s.reg = Some(new);
                            s.advance_commit(me, mutant, o);
                        }
                        _ if new.epoch >= s.epoch => s.become_primary(new, o),
                        _ => {}
                    }
                } else if let Some(cur) = cur {
                    s.learn(me, mutant, cur, o);
                } else if s.epoch > 0 {
                    // The register is gone: re-create it from what we know.
                    let known = match s.role {
                        Role::Primary { .. } => Some((me, s.reg.map_or(0, |r| r.sync))),
                        Role::Standby {
                            leader: Some(l), ..
                        } => Some((l, 0)),
                        _ => None,
                    };
                    if let Some((primary, sync)) = known {
                        let new = Reg {
                            version: s.reg.map_or(0, |r| r.version) + 1,
                            epoch: s.epoch,
                            primary,
                            sync,
                        };
                        s.send_cas(None, new, o);
                    }
                }
            }
            Msg::Append { epoch, base, log } => {
                if !s.follow(epoch, from, o) {
                    return;
                }
                let before = s.log.clone();
                reconcile(&mut s.log, epoch, base, &log);
                if s.log != before {
                    s.save(o);
                }
                o.send(
                    src,
                    Msg::Ack {
                        epoch: s.epoch,
                        len: s.log.len() as u8,
                    },
                );
            }
            Msg::Heartbeat { epoch, reg } => {
                if !s.follow(epoch, from, o) {
                    return;
                }
                // The primary's view of the register, if it is not older
                // than ours, says whether we are eligible.
                if reg.epoch == s.epoch
                    && s.reg
                        .is_none_or(|r| r.epoch < reg.epoch || r.version <= reg.version)
                {
                    s.reg = Some(reg);
                    s.role = Role::Standby {
                        leader: Some(from),
                        eligible: reg.has(me),
                    };
                }
            }
            Msg::Ack { epoch, len } => {
                if epoch > s.epoch {
                    s.adopt_epoch(epoch, None, o);
                } else if epoch == s.epoch {
                    if let Role::Primary { matched, .. } = &mut s.role {
                        *matched = (*matched).max(len);
                        s.advance_commit(me, mutant, o);
                        s.try_finish_demotion(me, mutant, o);
                    }
                }
            }
            Msg::Fence { epoch } => {
                if epoch > s.epoch {
                    s.adopt_epoch(epoch, None, o);
                }
            }
            Msg::SwitchoverFence { epoch } => match s.role {
                Role::Primary { .. } if epoch == s.epoch + 1 => {
                    s.demotion = Some(epoch);
                    s.try_finish_demotion(me, mutant, o);
                }
                // Stepped down for it already (the answer was lost): the
                // same answer again.
                Role::Standby {
                    leader: Some(leader),
                    ..
                } if epoch == s.epoch && leader == from => o.send(
                    src,
                    Msg::SwitchoverFenced {
                        epoch,
                        last: s.log.len() as u8,
                    },
                ),
                // A fence of an older epoch is refused, naming our leader.
                Role::Standby {
                    leader: Some(leader),
                    ..
                } if epoch < s.epoch => o.send(
                    src,
                    Msg::Leads {
                        epoch: s.epoch,
                        leader,
                    },
                ),
                _ => {}
            },
            Msg::SwitchoverFenced { epoch, last } => {
                let ours = s.switching == Some(epoch)
                    && epoch == s.epoch + 1
                    && s.pending.is_none()
                    && matches!(s.role, Role::Standby { leader: Some(l), .. } if l == from);
                if ours && usize::from(last) <= s.log.len() {
                    s.take_handed_epoch(me, epoch, o);
                }
            }
            Msg::Leads { epoch, leader } if epoch > s.epoch => {
                let handed = leader == me && epoch == s.epoch + 1;
                match s.role {
                    // The old primary stepped down for us (its answer was
                    // lost): it did so only once we held all it wrote.
                    Role::Standby { .. } if handed && s.pending.is_none() => {
                        s.take_handed_epoch(me, epoch, o)
                    }
                    // As `on_higher_epoch`: only a standby takes an epoch
                    // handed to it.
                    _ if handed => {}
                    _ if leader == me => s.adopt_epoch(epoch, None, o),
                    _ => s.adopt_epoch(epoch, Some(leader), o),
                }
            }
            Msg::Leads { .. } => {}
            Msg::Cas { .. } => {}
        }
        if **state != State::Node(s.clone()) {
            *state = Cow::Owned(State::Node(s));
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<State>, timer: &Timer, o: &mut Out<Self>) {
        o.set_timer(timer.clone(), model_timeout());
        let me = usize::from(id) as u8;
        let mutant = self.mutant();
        let switchovers = matches!(
            self,
            Arbiter::Node {
                switchover: true,
                ..
            }
        );
        if let State::Register(w) = &**state {
            if *timer == Timer::LoseFile && !w.lost {
                let w = Witness {
                    reg: None,
                    rebuilding: Some([None, None]),
                    lost: true,
                };
                *state.to_mut() = State::Register(w);
                o.save(Storage::Register(w));
                o.cancel_timer(Timer::LoseFile);
            }
            return;
        }
        let State::Node(s) = &**state else {
            return;
        };
        let mut s = s.clone();
        match (timer, &s.role) {
            (Timer::Write, Role::Primary { .. })
                if s.log.len() < MAX_LOG && s.demotion.is_none() =>
            {
                s.log.push(Rec {
                    epoch: s.epoch,
                    by: me,
                });
                s.save(o);
                s.send_append(me, o);
                s.advance_commit(me, mutant, o);
            }
            (Timer::Heartbeat, Role::Init) => {
                if let Some((expect, new)) = s.pending {
                    s.send_cas(expect, new, o);
                }
            }
            (Timer::Stream, Role::Primary { matched, .. })
                if usize::from(*matched) < s.log.len() =>
            {
                s.send_append(me, o)
            }
            (
                Timer::Heartbeat,
                Role::Primary {
                    matched, commit, ..
                },
            ) => {
                if let Some(reg) = s.reg {
                    o.send(
                        Id::from(usize::from(other(me))),
                        Msg::Heartbeat {
                            epoch: s.epoch,
                            reg,
                        },
                    );
                }
                if let Some((expect, new)) = s.pending {
                    s.send_cas(expect, new, o);
                } else if let Some(reg) = s.reg {
                    let caught_up =
                        *matched >= *commit || mutant == Mutant::RejoinSyncSetBeforeCaughtUp;
                    if !reg.has(other(me)) && caught_up {
                        let new = Reg {
                            version: reg.version + 1,
                            sync: reg.sync | (1 << other(me)),
                            ..reg
                        };
                        s.send_cas(Some(reg), new, o);
                    }
                }
            }
            (Timer::StandbyLost, Role::Primary { commit, .. })
                if usize::from(*commit) < s.log.len() && s.pending.is_none() =>
            {
                let Some(reg) = s.reg else { return };
                if !reg.has(other(me)) {
                    return;
                }
                let new = Reg {
                    version: reg.version + 1,
                    sync: reg.sync & !(1 << other(me)),
                    ..reg
                };
                if mutant == Mutant::SoloWithoutCas {
                    s.reg = Some(new);
                    s.advance_commit(me, mutant, o);
                } else {
                    s.send_cas(Some(reg), new, o);
                }
            }
            (
                Timer::Switchover,
                Role::Standby {
                    leader: Some(l), ..
                },
            ) if s.epoch < MAX_EPOCH && s.pending.is_none() => {
                let epoch = s.epoch + 1;
                s.switching = Some(epoch);
                o.send(Id::from(usize::from(*l)), Msg::SwitchoverFence { epoch });
            }
            // The standby did not catch up in time: the primary refuses
            // the switchover and writes again.
            (Timer::Switchover, Role::Primary { .. }) if s.demotion.is_some() => {
                s.demotion = None;
            }
            // A standby's rejoin asks its peer for history, saying its
            // epoch and leader. Only a switchover's step-down makes that
            // matter, so only the checks with switchovers send it (the
            // others keep their state space).
            (
                Timer::Heartbeat,
                Role::Standby {
                    leader: Some(l), ..
                },
            ) if *l != me && switchovers => {
                o.send(
                    Id::from(usize::from(other(me))),
                    Msg::Leads {
                        epoch: s.epoch,
                        leader: *l,
                    },
                );
                return;
            }
            (Timer::Failover, Role::Standby { .. }) if s.pending.is_some() => {
                if let Some((expect, new)) = s.pending {
                    s.send_cas(expect, new, o);
                }
            }
            (Timer::Failover, Role::Standby { eligible, .. }) => {
                let Some(reg) = s.reg else { return };
                let allowed = (*eligible && reg.has(me)) || mutant == Mutant::PromoteOutsideSyncSet;
                if !allowed || reg.epoch != s.epoch || reg.primary == me || reg.epoch >= MAX_EPOCH {
                    return;
                }
                s.send_cas(Some(reg), reg.promoting(me), o);
            }
            _ => return,
        }
        if **state != State::Node(s.clone()) {
            *state = Cow::Owned(State::Node(s));
        }
    }
}

type Sys = ActorModelState<Arbiter>;
type ArbiterModel = ActorModel<Arbiter, Cfg>;

/// The writes node `n` acknowledged, whether it is up or not (the ghost
/// is kept with its durable state so that a crash does not forget it).
fn acked_by(state: &Sys, n: u8) -> Option<&BTreeSet<(u8, Rec)>> {
    match &state.actor_storages[usize::from(n)] {
        Some(Storage::Node { acked, .. }) => Some(acked),
        _ => None,
    }
}

/// A node's state while it is up.
fn live(state: &Sys, n: u8) -> Option<&NodeState> {
    let i = usize::from(n);
    match &*state.actor_states[i] {
        State::Node(s) if !state.crashed[i] => Some(s),
        _ => None,
    }
}

/// Every write any node acknowledged, with the node.
fn acknowledged(state: &Sys) -> impl Iterator<Item = (u8, u8, Rec)> + '_ {
    NODES.iter().flat_map(move |&n| {
        acked_by(state, n)
            .into_iter()
            .flat_map(move |acked| acked.iter().map(move |(lsn, rec)| (n, *lsn, *rec)))
    })
}

fn one_writer_per_epoch(_: &ArbiterModel, state: &Sys) -> bool {
    let writers: BTreeSet<(u8, u8)> = acknowledged(state).map(|(n, _, r)| (r.epoch, n)).collect();
    let epochs: BTreeSet<u8> = writers.iter().map(|(e, _)| *e).collect();
    epochs.len() == writers.len()
}

fn no_acknowledged_write_lost(_: &ArbiterModel, state: &Sys) -> bool {
    NODES.iter().filter_map(|&n| live(state, n)).all(|s| {
        !matches!(s.role, Role::Primary { .. })
            || acknowledged(state).all(|(_, lsn, rec)| {
                rec.epoch >= s.epoch || s.log.get(usize::from(lsn) - 1) == Some(&rec)
            })
    })
}

fn a_failover_happens(_: &ArbiterModel, state: &Sys) -> bool {
    NODES
        .iter()
        .filter_map(|&n| live(state, n))
        .any(|s| matches!(s.role, Role::Primary { .. }) && s.epoch >= 2)
}

fn a_failback_happens(_: &ArbiterModel, state: &Sys) -> bool {
    NODES
        .iter()
        .filter_map(|&n| live(state, n))
        .any(|s| matches!(s.role, Role::Primary { .. }) && s.epoch >= 3)
}

fn a_write_is_acknowledged_after_a_failover(_: &ArbiterModel, state: &Sys) -> bool {
    acknowledged(state).any(|(_, _, rec)| rec.epoch >= 2)
}

fn a_switchover_hands_over(_: &ArbiterModel, state: &Sys) -> bool {
    NODES
        .iter()
        .filter_map(|&n| live(state, n))
        .any(|s| matches!(s.role, Role::Primary { .. }) && s.by_switchover)
}

const ONE_WRITER: &str = "at most one node acknowledges writes in an epoch";
const NOTHING_LOST: &str = "a primary's log holds every write acknowledged in an earlier epoch";
const FAILOVER: &str = "a standby becomes primary at a higher epoch";
const WRITE_AFTER_FAILOVER: &str = "a write is acknowledged after a failover";
const FAILBACK: &str = "the old primary becomes primary again, at epoch 3";
const SWITCHOVER: &str = "a standby takes over by a planned switchover";

/// One check: the rules (with at most one broken), where it starts, and
/// its bounds.
#[derive(Clone, Copy, Debug)]
struct Cfg {
    mutant: Mutant,
    start: Start,
    /// At most this many messages in flight at once (sent and neither
    /// delivered nor lost); states beyond are not explored.
    in_flight: usize,
    /// Breadth-first search stops at this many steps from the start.
    depth: usize,
    /// Whether the witness may lose its file (once).
    lose_file: bool,
    /// Whether a standby may start a planned switchover.
    switchover: bool,
}

impl Cfg {
    fn new(mutant: Mutant, start: Start) -> Self {
        Cfg {
            mutant,
            start,
            in_flight: 3,
            depth: 16,
            lose_file: false,
            switchover: false,
        }
    }
}

fn model(cfg: Cfg) -> ArbiterModel {
    let Cfg {
        mutant,
        start,
        switchover,
        ..
    } = cfg;
    let model = ActorModel::new(cfg, ())
        .actors(NODES.iter().map(|_| Arbiter::Node {
            mutant,
            start,
            switchover,
        }))
        .actor(Arbiter::Register {
            mutant,
            start,
            may_lose_file: cfg.lose_file,
        })
        .init_network(Network::new_unordered_nonduplicating([]))
        .lossy_network(LossyNetwork::Yes)
        .max_crashes(1)
        .within_boundary(within_bounds)
        .property(Expectation::Always, ONE_WRITER, one_writer_per_epoch)
        .property(
            Expectation::Always,
            NOTHING_LOST,
            no_acknowledged_write_lost,
        )
        .property(Expectation::Sometimes, FAILOVER, a_failover_happens)
        .property(
            Expectation::Sometimes,
            WRITE_AFTER_FAILOVER,
            a_write_is_acknowledged_after_a_failover,
        )
        .property(Expectation::Sometimes, FAILBACK, a_failback_happens);
    if switchover {
        model.property(Expectation::Sometimes, SWITCHOVER, a_switchover_hands_over)
    } else {
        model
    }
}

/// The register's crashes are left out: its state is its durable state,
/// so a crash is only a time it does not answer, which the lossy network
/// already covers.
fn within_bounds(cfg: &Cfg, state: &Sys) -> bool {
    state.network.len() <= cfg.in_flight && !state.crashed[REGISTER]
}

/// Runs the breadth-first check to its depth bound (or, with `finish`,
/// until that happens) and prints what it covered.
fn check(cfg: Cfg, finish: HasDiscoveries) -> impl Checker<ArbiterModel> {
    let started = Instant::now();
    let checker = model(cfg)
        .checker()
        .target_max_depth(cfg.depth)
        .finish_when(finish)
        .spawn_bfs()
        .join();
    println!(
        "{:?} from {:?}{}, at most {} messages in flight, depth bound {}: {} states ({} unique) in {:?}",
        cfg.mutant,
        cfg.start,
        if cfg.switchover {
            " with switchovers"
        } else {
            ""
        },
        cfg.in_flight,
        cfg.depth,
        checker.state_count(),
        checker.unique_state_count(),
        started.elapsed()
    );
    checker
}

#[test]
fn the_arbiter_rules_keep_one_writer_per_epoch_and_lose_no_acknowledged_write() {
    let cfg = Cfg {
        depth: 20,
        ..Cfg::new(Mutant::None, Start::Bootstrapped)
    };
    let checker = check(cfg, HasDiscoveries::All);
    checker.assert_properties();
}

#[test]
fn two_nodes_started_as_primary_never_both_write() {
    let checker = check(Cfg::new(Mutant::None, Start::Fresh), HasDiscoveries::All);
    checker.assert_no_discovery(ONE_WRITER);
    checker.assert_no_discovery(NOTHING_LOST);
}

/// Runs the check with one rule broken until a property fails, prints
/// the counterexample, and says whether `property` is the one that
/// failed.
fn counterexample(cfg: Cfg, property: &'static str) -> bool {
    let checker = check(cfg, HasDiscoveries::AnyFailures);
    let Some(path) = checker.discovery(property) else {
        return false;
    };
    let actions = path.into_actions();
    println!("{property}: counterexample in {} steps", actions.len());
    for action in actions {
        println!("  {action:?}");
    }
    true
}

#[test]
fn going_solo_without_the_cas_loses_an_acknowledged_write() {
    assert!(counterexample(
        Cfg::new(Mutant::SoloWithoutCas, Start::Bootstrapped),
        NOTHING_LOST
    ));
}

#[test]
fn promoting_outside_the_sync_set_loses_an_acknowledged_write() {
    assert!(counterexample(
        Cfg::new(Mutant::PromoteOutsideSyncSet, Start::Bootstrapped),
        NOTHING_LOST
    ));
}

#[test]
fn rejoining_the_sync_set_before_catching_up_loses_an_acknowledged_write() {
    assert!(counterexample(
        Cfg::new(Mutant::RejoinSyncSetBeforeCaughtUp, Start::Bootstrapped),
        NOTHING_LOST
    ));
}

#[test]
fn bootstrapping_without_the_register_lets_two_nodes_write_in_one_epoch() {
    assert!(counterexample(
        Cfg::new(Mutant::BootstrapWithoutRegister, Start::Fresh),
        ONE_WRITER
    ));
}

#[test]
fn recreating_a_lost_register_below_the_nodes_epoch_loses_an_acknowledged_write() {
    let cfg = Cfg {
        lose_file: true,
        ..Cfg::new(Mutant::CreateRegisterOverHigherEpoch, Start::FailedOver)
    };
    assert!(counterexample(cfg, NOTHING_LOST));
}

#[test]
fn a_witness_that_lost_its_file_is_rebuilt_from_the_highest_epoch() {
    let cfg = Cfg {
        lose_file: true,
        ..Cfg::new(Mutant::None, Start::FailedOver)
    };
    let checker = check(cfg, HasDiscoveries::All);
    checker.assert_no_discovery(ONE_WRITER);
    checker.assert_no_discovery(NOTHING_LOST);
}

#[test]
fn planned_switchovers_keep_one_writer_per_epoch_and_lose_no_acknowledged_write() {
    let cfg = Cfg {
        switchover: true,
        ..Cfg::new(Mutant::None, Start::Bootstrapped)
    };
    let checker = check(cfg, HasDiscoveries::All);
    checker.assert_properties();
}

#[test]
fn a_primary_that_steps_down_before_its_standby_caught_up_loses_an_acknowledged_write() {
    let cfg = Cfg {
        switchover: true,
        ..Cfg::new(Mutant::SwitchoverAnswerBeforeCaughtUp, Start::Bootstrapped)
    };
    assert!(counterexample(cfg, NOTHING_LOST));
}

#[test]
fn an_old_primary_that_writes_on_after_the_switchovers_fence_loses_an_acknowledged_write() {
    let cfg = Cfg {
        switchover: true,
        ..Cfg::new(
            Mutant::OldPrimaryWritesOnAfterSwitchover,
            Start::Bootstrapped,
        )
    };
    assert!(counterexample(cfg, NOTHING_LOST));
}

/// A search with other bounds, by hand: `MODEL_DEPTH`, `MODEL_IN_FLIGHT`,
/// `MODEL_START` (0 fresh, 1 bootstrapped, 2 after a failover) and
/// `MODEL_LOSE=1` (the witness may lose its file), `MODEL_SWITCHOVER=1`
/// (standbys may start planned switchovers). It prints what it
/// found; an Always property in that list is a counterexample.
#[test]
#[ignore]
fn explore() {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.parse().unwrap());
    let start = match var("MODEL_START") {
        Some(0) => Start::Fresh,
        Some(2) => Start::FailedOver,
        _ => Start::Bootstrapped,
    };
    let mut cfg = Cfg::new(Mutant::None, start);
    cfg.lose_file = var("MODEL_LOSE") == Some(1);
    cfg.switchover = var("MODEL_SWITCHOVER") == Some(1);
    cfg.depth = var("MODEL_DEPTH").unwrap_or(cfg.depth);
    cfg.in_flight = var("MODEL_IN_FLIGHT").unwrap_or(cfg.in_flight);
    let checker = check(cfg, HasDiscoveries::All);
    println!("{:?}", checker.discoveries().keys().collect::<Vec<_>>());
}

#[test]
fn acknowledging_alone_while_the_standby_is_being_added_loses_an_acknowledged_write() {
    assert!(counterexample(
        Cfg::new(
            Mutant::AcknowledgeAloneWhileAddingStandby,
            Start::Bootstrapped
        ),
        NOTHING_LOST
    ));
}

#[test]
fn a_primary_not_fenced_by_a_failed_cas_loses_an_acknowledged_write() {
    assert!(counterexample(
        Cfg::new(Mutant::NotFencedByFailedCas, Start::Bootstrapped),
        NOTHING_LOST
    ));
}
