//! The token's datalog loaded once per [`Capability`](crate::Capability):
//! facts, rules and every block's checks already in one symbol table, so a
//! request only adds its own facts and runs the checks. Building a biscuit
//! authorizer from the token per request re-decoded and re-translated every
//! block, which was most of the cost of a decision.
//!
//! The steps mirror biscuit's own authorizer (load the token as an authorizer
//! snapshot would restore it, run the rules, then run block 0's checks and
//! every later block's, each query under the origins its scopes trust), under
//! the same explicit limits. The tests compare every decision with biscuit's
//! authorizer built from scratch.
//!
//! Per request, the work biscuit's general machinery would redo is avoided
//! where the outcome provably cannot differ: a query whose body can bind in
//! only one way (each request fact is unique per predicate) has its
//! expressions evaluated once by biscuit's own evaluator instead of through
//! its nested matcher; biscuit's hashed fact set is built only for a query
//! with several candidates or a token with rules; facts no check reads are
//! left out when nothing can derive from them; the approval re-run only
//! re-evaluates checks reading `approved`; symbol tables are reused.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use biscuit_auth::builder::CheckKind;
use biscuit_auth::datalog::{
    match_preds, Check, ExternFunc, Fact, FactSet, Origin, Predicate, Rule, RuleSet, SymbolIndex,
    SymbolTable, TemporarySymbolTable, Term, TrustedOrigins, World,
};
use biscuit_auth::error::{Execution, Expression as ExpressionError, RunLimit, Token};
use biscuit_auth::format::convert::{
    proto_fact_to_token_fact, proto_snapshot_block_to_token_block,
};
use biscuit_auth::format::schema;
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, PublicKey};

/// Explicit limits: biscuit's default 1 ms trips in debug builds and on a
/// loaded machine; our blocks derive no facts, so the fact and iteration
/// ceilings are generous while still bounding a hostile attenuation block.
/// The time is wall-clock: a debug build inside the QEMU harness (emulated,
/// one CPU shared with the guest's vCPU) took over 100 ms for a session's
/// first DNS decision (seen 2026-12-03 in both harness tests), so debug
/// builds get 2 s; release builds keep 100 ms. The fact and iteration
/// limits bound the work either way.
pub(crate) const LIMITS: AuthorizerLimits = AuthorizerLimits {
    max_facts: 1_000,
    max_iterations: 100,
    max_time: if cfg!(debug_assertions) {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(100)
    },
};

/// Origin of facts the authorizer (the request) adds, as biscuit numbers it.
const AUTHORIZER: usize = usize::MAX;

/// Names of the facts a request adds (`authorize.rs`), interned when the
/// token is loaded so a request does not look them up again.
const REQUEST_PREDICATES: [&str; 17] = [
    "kind",
    "method",
    "host",
    "path",
    "route",
    "merchant",
    "recipients",
    "credential",
    "cost",
    "spent",
    "emails_sent",
    "llm_spent",
    "time",
    "amount",
    "currency",
    "subject",
    APPROVED,
];

/// Symbol tables kept for reuse, at most.
const MAX_SPARE: usize = 64;

/// The fact a human's yes adds; only approval checks read it.
const APPROVED: &str = "approved";

/// One check of one block, with the origins each of its queries trusts.
struct LoadedCheck {
    check: Check,
    trusted: Vec<TrustedOrigins>,
    /// Some query of this check reads `approved`.
    reads_approved: bool,
    /// Per query, per body predicate: the token's facts that query trusts
    /// and that predicate matches, found once at load. Empty when the token
    /// has rules (then the facts are the request's derived world's). Scanning
    /// every token fact per predicate per request was the larger part of
    /// finding a binding.
    token_candidates: Vec<Vec<Vec<Fact>>>,
}

/// The token's world before any request: see the module doc.
pub(crate) struct TokenWorld {
    /// The token's symbols plus [`REQUEST_PREDICATES`].
    symbols: SymbolTable,
    /// Invariant: when `rules` is empty, only facts some check reads (the
    /// others, such as the block records, can never match anything).
    facts: FactSet,
    rules: RuleSet,
    /// Per block (0 = authority), its checks in order.
    blocks: Vec<Vec<LoadedCheck>>,
    /// Symbol ids of [`REQUEST_PREDICATES`], in order.
    predicates: [SymbolIndex; REQUEST_PREDICATES.len()],
    /// Per [`REQUEST_PREDICATES`] entry: false when the token has no rules
    /// and no check reads it, so a request need not add it.
    needed: [bool; REQUEST_PREDICATES.len()],
    /// The origin of every request fact.
    authorizer: Origin,
    /// Symbol tables of finished requests, cut back to `symbols`: cloning
    /// the token's strings per request was a large part of a decision.
    /// Invariant: each holds exactly `symbols`' strings.
    spare: Mutex<Vec<SymbolTable>>,
}

/// A check that failed: block index and check index within the block.
pub(crate) type FailedCheck = (u32, u32);

/// The request's side of the world: facts the authorizer adds.
pub(crate) struct RequestFacts<'w> {
    token: &'w TokenWorld,
    /// The request's facts in the order added (a fact added twice is here
    /// twice, in `world` once).
    added: Vec<Fact>,
    /// The token's facts and rules plus `added`, built when first needed:
    /// always when the token has rules, otherwise only for a query with
    /// several candidate facts (hashing every fact into biscuit's sets was
    /// a large part of a decision).
    world: Option<World>,
    symbols: SymbolTable,
}

fn token_error(e: impl Into<Token>) -> String {
    format!("authorization error: {}", e.into())
}

fn origin(origins: &[schema::Origin]) -> Result<Origin, String> {
    let mut out = Origin::default();
    for o in origins {
        match o.content {
            Some(schema::origin::Content::Authorizer(_)) => out.insert(AUTHORIZER),
            Some(schema::origin::Content::Origin(i)) => out.insert(i as usize),
            None => return Err("authorization error: fact without an origin".to_owned()),
        }
    }
    Ok(out)
}

impl TokenWorld {
    /// Loads `token` through biscuit's authorizer once (which validates its
    /// rules and translates every block into one symbol table) and keeps the
    /// result. Errors read as an authorization error: every decision blocks.
    pub(crate) fn load(token: &Biscuit) -> Result<TokenWorld, String> {
        let authorizer = AuthorizerBuilder::new()
            .set_limits(LIMITS)
            .build(token)
            .map_err(token_error)?;
        let world = authorizer.snapshot().map_err(token_error)?.world;

        // Public key ids as biscuit's snapshot restore assigns them: the
        // snapshot's keys, then third-party signers not yet among them.
        let mut keys = world
            .public_keys
            .iter()
            .map(PublicKey::from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(token_error)?;
        let mut blocks = Vec::with_capacity(world.blocks.len());
        let mut key_blocks: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, proto) in world.blocks.iter().enumerate() {
            let block = proto_snapshot_block_to_token_block(proto).map_err(token_error)?;
            if let Some(key) = &block.external_key {
                let id = match keys.iter().position(|k| k == key) {
                    Some(id) => id,
                    None => {
                        keys.push(*key);
                        keys.len() - 1
                    }
                };
                key_blocks.entry(id).or_default().push(i);
            }
            blocks.push(block);
        }
        let symbols =
            SymbolTable::from_symbols_and_public_keys(world.symbols, keys).map_err(token_error)?;

        let mut facts = FactSet::default();
        for generated in &world.generated_facts {
            let origin = origin(&generated.origins)?;
            for fact in &generated.facts {
                facts.insert(
                    &origin,
                    proto_fact_to_token_fact(fact).map_err(token_error)?,
                );
            }
        }

        let mut symbols = symbols;
        let predicates = REQUEST_PREDICATES.map(|name| symbols.insert(name));
        let approved = predicates[REQUEST_PREDICATES.len() - 1];

        let mut rules = RuleSet::default();
        let mut checks: Vec<Vec<LoadedCheck>> = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.into_iter().enumerate() {
            let block_trust = TrustedOrigins::from_scopes(
                &block.scopes,
                &TrustedOrigins::default(),
                i,
                &key_blocks,
            );
            for rule in block.rules {
                rule.validate_variables(&symbols).map_err(|_| {
                    token_error(biscuit_auth::error::Logic::InvalidBlockRule(
                        0,
                        symbols.print_rule(&rule),
                    ))
                })?;
                let trust = TrustedOrigins::from_scopes(&rule.scopes, &block_trust, i, &key_blocks);
                rules.insert(i, &trust, rule);
            }
            let loaded = block
                .checks
                .into_iter()
                .map(|check| LoadedCheck {
                    reads_approved: check
                        .queries
                        .iter()
                        .any(|q| q.body.iter().any(|p| p.name == approved)),
                    trusted: check
                        .queries
                        .iter()
                        .map(|q| {
                            TrustedOrigins::from_scopes(&q.scopes, &block_trust, i, &key_blocks)
                        })
                        .collect(),
                    token_candidates: Vec::new(),
                    check,
                })
                .collect();
            checks.push(loaded);
        }
        let read = read(&checks);
        let facts = if rules.inner.is_empty() {
            // Without rules nothing is derived (and the fact ceiling is
            // never consulted), so a fact whose predicate no check reads
            // cannot change any outcome: leave it out of every request.
            let mut kept = FactSet::default();
            kept.extend(
                facts
                    .into_iter()
                    .filter(|(_, f)| read.contains(&f.predicate.name)),
            );
            kept
        } else {
            facts
        };
        if rules.inner.is_empty() {
            for loaded in checks.iter_mut().flatten() {
                loaded.token_candidates = loaded
                    .check
                    .queries
                    .iter()
                    .zip(&loaded.trusted)
                    .map(|(query, trust)| {
                        query
                            .body
                            .iter()
                            .map(|p| trusted_matches(&facts, trust, p).cloned().collect())
                            .collect()
                    })
                    .collect();
            }
        }
        let needed = predicates.map(|name| !rules.inner.is_empty() || read.contains(&name));
        let mut authorizer = Origin::default();
        authorizer.insert(AUTHORIZER);
        Ok(TokenWorld {
            symbols,
            facts,
            rules,
            blocks: checks,
            predicates,
            needed,
            authorizer,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// A fresh request world: the token's facts and rules, nothing else yet.
    pub(crate) fn request(&self) -> RequestFacts<'_> {
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        RequestFacts {
            token: self,
            added: Vec::with_capacity(REQUEST_PREDICATES.len()),
            world: None,
            symbols: spare.unwrap_or_else(|| self.symbols.clone()),
        }
    }

    /// The token's facts and rules with the request's `added` facts.
    fn world_with(&self, added: &[Fact]) -> World {
        let mut facts = self.facts.clone();
        for fact in added {
            facts.insert(&self.authorizer, fact.clone());
        }
        World {
            facts,
            rules: self.rules.clone(),
            iterations: 0,
            extern_funcs: HashMap::new(),
        }
    }

    /// Runs the rules, then every block's checks, the way biscuit's
    /// authorizer does; returns the failed checks in block order.
    pub(crate) fn failed_checks(&self, req: &mut RequestFacts) -> Result<Vec<FailedCheck>, String> {
        self.run_checks(req, |_| true, Vec::new())
    }

    /// Adds `approved(true)` to a request whose checks already ran (and
    /// failed `first`), and returns the failed checks as a fresh run with
    /// that fact would. Without rules nothing is derived from `approved`,
    /// and a check whose queries do not read it matches exactly the facts it
    /// matched before: only the checks reading it run again.
    pub(crate) fn failed_checks_approved(
        &self,
        req: &mut RequestFacts,
        first: &[FailedCheck],
    ) -> Result<Vec<FailedCheck>, String> {
        req.add(APPROVED, |_| vec![Term::Bool(true)]);
        if !self.rules.inner.is_empty() {
            return self.failed_checks(req);
        }
        let kept = first
            .iter()
            .copied()
            .filter(|&(b, c)| !self.blocks[b as usize][c as usize].reads_approved)
            .collect();
        let mut failed = self.run_checks(req, |l| l.reads_approved, kept)?;
        failed.sort_unstable();
        Ok(failed)
    }

    /// Runs the rules and the checks `which` selects, adding failures to
    /// `failed` in block order.
    fn run_checks(
        &self,
        req: &mut RequestFacts,
        which: impl Fn(&LoadedCheck) -> bool,
        mut failed: Vec<FailedCheck>,
    ) -> Result<Vec<FailedCheck>, String> {
        let deadline = Instant::now() + LIMITS.max_time;
        let rules = !self.rules.inner.is_empty();
        let added = &req.added;
        let symbols = &req.symbols;
        let world = &mut req.world;
        if rules {
            // Without rules running them derives nothing: skipped.
            world
                .get_or_insert_with(|| self.world_with(added))
                .run_with_limits(symbols, LIMITS)
                .map_err(token_error)?;
        }
        let funcs = HashMap::new();
        // One map for every query's binding, cleared between them: a fresh
        // map per query was an allocation and a rehash each.
        let mut values = HashMap::new();
        for (b, checks) in self.blocks.iter().enumerate() {
            for (c, loaded) in checks.iter().enumerate() {
                if !which(loaded) {
                    continue;
                }
                let mut passed = false;
                for (q, (query, trust)) in
                    loaded.check.queries.iter().zip(&loaded.trusted).enumerate()
                {
                    let found = if rules {
                        // The derived world holds the request's facts too.
                        let facts = &world.get_or_insert_with(|| self.world_with(added)).facts;
                        bindings(query, |_, p| trusted_matches(facts, trust, p), &mut values)
                    } else {
                        let own = &loaded.token_candidates[q];
                        // Biscuit's scopes always trust the authorizer
                        // today; asked anyway, as its fact set would.
                        let added = if trust.contains(&self.authorizer) {
                            &added[..]
                        } else {
                            &[]
                        };
                        bindings(
                            query,
                            |i, p| {
                                own[i]
                                    .iter()
                                    .chain(added.iter().filter(|f| match_preds(p, &f.predicate)))
                            },
                            &mut values,
                        )
                    };
                    let matched = match found {
                        // Nothing to bind: biscuit would find no match either
                        // (and this took no time worth a clock read).
                        Bindings::None => matches!(loaded.check.kind, CheckKind::Reject),
                        Bindings::One => {
                            let holds =
                                holds(query, &values, symbols, &funcs).map_err(token_error)?;
                            if Instant::now() >= deadline {
                                return Err(token_error(Execution::RunLimit(RunLimit::Timeout)));
                            }
                            // One binding: `check if` and `check all` hold
                            // exactly when its expressions do.
                            holds != matches!(loaded.check.kind, CheckKind::Reject)
                        }
                        Bindings::Many => {
                            let facts = &world.get_or_insert_with(|| self.world_with(added)).facts;
                            let funcs = &funcs;
                            let matched = match loaded.check.kind {
                                CheckKind::One => query.find_match(facts, b, trust, symbols, funcs),
                                CheckKind::All => {
                                    query.check_match_all(facts, trust, symbols, funcs)
                                }
                                CheckKind::Reject => query
                                    .find_match(facts, b, trust, symbols, funcs)
                                    .map(|m| !m),
                            }
                            .map_err(token_error)?;
                            if Instant::now() >= deadline {
                                return Err(token_error(Execution::RunLimit(RunLimit::Timeout)));
                            }
                            matched
                        }
                    };
                    if matched {
                        passed = true;
                        break;
                    }
                }
                if !passed {
                    failed.push((b as u32, c as u32));
                }
            }
        }
        Ok(failed)
    }

    /// A check's datalog as biscuit prints it (for reasons).
    pub(crate) fn check_source(&self, (block, check): FailedCheck) -> String {
        self.blocks
            .get(block as usize)
            .and_then(|b| b.get(check as usize))
            .map(|l| self.symbols.print_check(&l.check))
            .unwrap_or_default()
    }
}

/// Names of the predicates some check reads.
fn read(checks: &[Vec<LoadedCheck>]) -> HashSet<SymbolIndex> {
    checks
        .iter()
        .flatten()
        .flat_map(|l| &l.check.queries)
        .flat_map(|q| &q.body)
        .map(|p| p.name)
        .collect()
}

/// How the body of a query can bind its variables to the facts it trusts.
enum Bindings {
    /// Not at all: biscuit finds no match, evaluates no expression (so
    /// cannot fail), and `check all` fails for want of a match.
    None,
    /// In exactly one way (the variables left in the caller's map): biscuit's
    /// matcher would produce this one set of variables and evaluate the
    /// expressions on it, nothing else.
    One,
    /// Some predicate has several candidate facts: left to biscuit.
    Many,
}

/// Enumerates candidates the way biscuit's matcher does (the trusted facts
/// passing `match_preds`, each predicate's variables bound consistently),
/// but stops at the question whether there are none, one or more.
/// `candidates(i, p)` yields the facts body predicate `i` (`p`) matches, as
/// biscuit's matcher would see them: the token's (or derived world's)
/// trusted facts, then the request's `added` ones if the query trusts the
/// authorizer. A fact in both or twice in `added`, once in biscuit's set,
/// only makes "more" more likely, and "more" goes to biscuit. Each
/// request fact is unique per predicate, so nearly every query of ours has
/// one binding, and building biscuit's nested matcher for it (boxed
/// iterators, a variable map per level) was most of a decision's cost.
fn bindings<'f, I: Iterator<Item = &'f Fact>>(
    query: &'f Rule,
    mut candidates: impl FnMut(usize, &'f Predicate) -> I,
    values: &mut HashMap<u32, Term>,
) -> Bindings {
    values.clear();
    for (i, p) in query.body.iter().enumerate() {
        let mut candidates = candidates(i, p);
        let Some(fact) = candidates.next() else {
            return Bindings::None;
        };
        if candidates.next().is_some() {
            return Bindings::Many;
        }
        for (term, value) in p.terms.iter().zip(&fact.predicate.terms) {
            if let Term::Variable(v) = term {
                match values.get(v) {
                    // Every combination uses this one fact: none binds.
                    Some(bound) if bound != value => return Bindings::None,
                    Some(_) => {}
                    None => {
                        values.insert(*v, value.clone());
                    }
                }
            }
        }
    }
    Bindings::One
}

/// The facts of `facts` that `trust` admits and `p` matches, in the order
/// biscuit's matcher meets them.
fn trusted_matches<'f>(
    facts: &'f FactSet,
    trust: &'f TrustedOrigins,
    p: &'f Predicate,
) -> impl Iterator<Item = &'f Fact> {
    facts
        .iterator(trust)
        .map(|(_, f)| f)
        .filter(move |f| match_preds(p, &f.predicate))
}

/// Evaluates `query`'s expressions on one binding, as biscuit does for
/// each match: all must be `true`; a non-boolean is an error.
fn holds(
    query: &Rule,
    values: &HashMap<u32, Term>,
    symbols: &SymbolTable,
    funcs: &HashMap<String, ExternFunc>,
) -> Result<bool, Execution> {
    let mut temporary = TemporarySymbolTable::new(symbols);
    for e in &query.expressions {
        match e.evaluate(values, &mut temporary, funcs) {
            Ok(Term::Bool(true)) => {}
            Ok(Term::Bool(false)) => return Ok(false),
            Ok(_) => return Err(Execution::Expression(ExpressionError::InvalidType)),
            Err(e) => return Err(Execution::Expression(e)),
        }
    }
    Ok(true)
}

impl RequestFacts<'_> {
    /// Interns a string the request carries.
    pub(crate) fn str(&mut self, s: &str) -> Term {
        Term::Str(self.symbols.insert(s))
    }

    /// Adds `name(terms…)` as a fact of the authorizer. The terms are made
    /// (and their strings interned) only if the token reads the fact.
    pub(crate) fn add(&mut self, name: &str, terms: impl FnOnce(&mut Self) -> Vec<Term>) {
        let token = self.token;
        let name: SymbolIndex = match REQUEST_PREDICATES.iter().position(|p| *p == name) {
            Some(i) if !token.needed[i] => return,
            Some(i) => token.predicates[i],
            None => self.symbols.insert(name),
        };
        let terms = terms(self);
        let fact = Fact {
            predicate: Predicate { name, terms },
        };
        if let Some(world) = &mut self.world {
            world.facts.insert(&token.authorizer, fact.clone());
        }
        self.added.push(fact);
    }
}

impl Drop for RequestFacts<'_> {
    /// Gives the symbol table back, cut to the token's own strings.
    fn drop(&mut self) {
        let base = self.token.symbols.current_offset();
        let mut symbols = std::mem::replace(&mut self.symbols, SymbolTable::new());
        if symbols.current_offset() < base {
            return;
        }
        drop(symbols.split_at(base));
        let mut spare = self
            .token
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // One per request in flight at once; more is never needed again.
        if spare.len() < MAX_SPARE {
            spare.push(symbols);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use biscuit_auth::builder::{fact, Convert, Term as BTerm};
    use biscuit_auth::error::{FailedCheck as BiscuitFailed, Logic};
    use biscuit_auth::{BlockBuilder, KeyPair};
    use proptest::prelude::*;

    use super::*;
    use crate::datalog::unix_seconds;
    use crate::{mint, Policy, UnverifiedToken};

    const ROOT: [u8; 32] = [9; 32];
    type Facts = Vec<(&'static str, Vec<BTerm>)>;
    type Outcome = Result<Vec<(u32, u32, String)>, String>;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_600)
    }

    /// The reference: biscuit's own authorizer, built from scratch with the
    /// facts, as every decision used to be made. Its time limit is wide: a
    /// debug build on a loaded machine can spend more than `LIMITS.max_time`
    /// in it, and the reference's speed is not what these tests compare.
    fn reference(token: &Biscuit, facts: &Facts) -> Outcome {
        let mut b = AuthorizerBuilder::new().set_limits(AuthorizerLimits {
            max_time: Duration::from_secs(10),
            ..LIMITS
        });
        for (name, terms) in facts {
            b = b.fact(fact(name, terms)).map_err(token_error)?;
        }
        let mut authorizer = b
            .policy("allow if true")
            .and_then(|b| b.build(token))
            .map_err(token_error)?;
        match authorizer.authorize() {
            Ok(_) => Ok(Vec::new()),
            Err(Token::FailedLogic(
                Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
            )) => Ok(checks
                .into_iter()
                .map(|c| match c {
                    BiscuitFailed::Block(b) => (b.block_id, b.check_id, b.rule),
                    BiscuitFailed::Authorizer(a) => panic!("authorizer check {a:?}"),
                })
                .collect()),
            Err(e) => Err(token_error(e)),
        }
    }

    fn loaded(world: &TokenWorld, facts: &Facts) -> Outcome {
        let mut req = world.request();
        for (name, terms) in facts {
            req.add(name, |req| {
                terms.iter().map(|t| t.convert(&mut req.symbols)).collect()
            });
        }
        let failed = world.failed_checks(&mut req)?;
        Ok(failed
            .into_iter()
            .map(|f| (f.0, f.1, world.check_source(f)))
            .collect())
    }

    fn seed_text() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/flight-booking/policy.toml"
        ))
        .expect("seed policy")
    }

    fn parse(token: &str) -> Biscuit {
        let public = ed25519_dalek::SigningKey::from_bytes(&ROOT)
            .verifying_key()
            .to_bytes();
        UnverifiedToken::from_base64(token)
            .expect("parse")
            .verify(&public)
            .expect("verify")
            .inner
    }

    fn append(token: Biscuit, code: &str) -> Biscuit {
        let block = BlockBuilder::new().code(code).expect("datalog");
        token.append(block).expect("append")
    }

    /// Tokens whose blocks exercise what the evaluator must get right: our
    /// own blocks, and opaque ones with rules, facts, `check all`,
    /// `reject if`, scopes and a third-party block.
    fn tokens() -> Vec<Biscuit> {
        let seed = Policy::from_toml_str(&seed_text()).expect("seed");
        let minted = parse(&mint(&seed, &ROOT, t0()).expect("mint"));
        let narrow = Policy::from_toml_str(
            "ttl = \"10m\"\n[web]\nallow = [\"kayak.com\", \"google.com/flights\"]\nmethods = [\"GET\"]\n\
             [payment]\nmerchant = \"united.com\"\ncurrency = \"USD\"\nmax_per_charge = \"500.00\"\n\
             approval_above = \"100.00\"\ncard = \"united_card\"\n",
        )
        .expect("narrow");
        let narrowed = parse(
            &UnverifiedToken::from_base64(&minted.to_base64().expect("b64"))
                .expect("parse")
                .attenuate(&narrow, t0())
                .expect("attenuate"),
        );
        let llm = Policy::from_toml_str(
            "[llm]\nproviders = [\"api.openai.com\", \"*.anthropic.com\"]\ncredential = \"k\"\n\
             budget_usd = \"2.00\"\n[[approval]]\ntype = \"llm\"\nabove = \"0.10\"\n\
             [[approval]]\ntype = \"email\"\n[email]\nhost = \"m.x\"\nrecipients = [\"a@x\", \"b@x\"]\n",
        )
        .expect("llm policy");
        let llm = parse(&mint(&llm, &ROOT, t0()).expect("mint"));

        let opaque = append(
            minted.clone(),
            "site($h) <- host($h), [\"united.com\", \"kayak.com\"].contains($h);\n\
             check if site($h) or kind(\"email\");\n\
             check all method($m), [\"GET\", \"POST\"].contains($m);\n\
             reject if amount($a), $a > 50000;\n\
             mark(1);",
        );
        let opaque = append(
            opaque,
            "check if mark(1) or kind(\"web\");\n\
             check if mark(1) trusting previous;\n\
             check if site($h) trusting previous or kind(\"payment\");\n\
             check if time($t), $t <= 2026-01-01T00:05:00Z;\n\
             check if site($h) or kind(\"payment\");",
        );

        let signer = KeyPair::new();
        let request = narrowed.third_party_request().expect("request");
        let block = request
            .create_block(
                &signer.private(),
                BlockBuilder::new()
                    .code("vouched(true); check if method($m), $m != \"DELETE\";")
                    .expect("datalog"),
            )
            .expect("third-party block");
        let third = narrowed
            .append_third_party(signer.public(), block)
            .expect("append third party");
        let trusting = format!(
            "check if vouched(true) trusting {};\ncheck if vouched(true);",
            signer.public()
        );
        let third = append(third, &trusting);
        // A rule derived from `approved` (the approval re-run must then run
        // everything again), and a check reading the block record (which
        // must then be kept although records are otherwise left out).
        let approving = append(
            llm.clone(),
            "yes(true) <- approved(true);\ncheck if yes(true) or kind(\"web\");",
        );
        let reads_record = append(
            narrowed.clone(),
            "check if openclaw_policy($r) or kind(\"dns\");",
        );
        // Several candidate facts for one predicate (left to biscuit's
        // matcher), and a variable two predicates must agree on.
        let several = append(
            minted.clone(),
            "allowed(\"GET\");\nallowed(\"HEAD\");\n\
             check if method($m), allowed($m) or kind(\"dns\");\n\
             check all allowed($a), $a != \"POST\";\n\
             reject if allowed($a), method($a), $a == \"HEAD\";\n\
             check if kind($k), host($k) or kind(\"web\");\n\
             check if host($h), merchant($h), $h.length() > 3 or kind(\"email\");",
        );
        // An expression that fails (overflow) for most costs.
        let erring = append(
            minted.clone(),
            "check if cost($c), $c * 4611686018427387904 >= 0 or kind(\"dns\");",
        );
        vec![
            minted,
            narrowed,
            llm,
            opaque,
            third,
            approving,
            reads_record,
            several,
            erring,
        ]
    }

    fn arb_facts() -> impl Strategy<Value = Facts> {
        let s = |v: &'static [&'static str]| proptest::sample::select(v);
        (
            s(&[
                "web",
                "payment",
                "email",
                "login",
                "llm",
                "dns",
                "credential",
            ]),
            s(&["GET", "POST", "HEAD", "DELETE"]),
            s(&[
                "united.com",
                "kayak.com",
                "google.com",
                "api.mail.example",
                "m.x",
                "evilunited.com",
                "x.anthropic.com",
                "api.openai.com",
            ]),
            (
                s(&[
                    "/",
                    "/flights",
                    "/flights/x",
                    "/flightsx",
                    "/travel/flights?q=1",
                ]),
                s(&["/", "/flights", "/flights/x", "/flightsx"]),
            ),
            (
                proptest::option::of(0i64..80_000),
                proptest::option::of(s(&["USD", "EUR"])),
            ),
            s(&["", "united.com", "kayak.com"]),
            proptest::sample::subsequence(
                &["traveler@example.com", "a@x", "b@x", "c@x"][..],
                0..=3,
            ),
            proptest::option::of(s(&["your flight confirmation", "hello"])),
            s(&["", "united_card", "united_login", "k"]),
            (0i64..300_000, 0i64..80_000, 0i64..4, 0i64..3_000_000),
            (0u64..1_200, any::<bool>()),
        )
            .prop_map(
                |(
                    kind,
                    method,
                    host,
                    (path, route),
                    (amount, currency),
                    merchant,
                    to,
                    subject,
                    cred,
                    n,
                    (secs, approved),
                )| {
                    let str = |v: &str| BTerm::Str(v.to_owned());
                    let mut facts: Facts = vec![
                        ("kind", vec![str(kind)]),
                        ("method", vec![str(method)]),
                        ("host", vec![str(host)]),
                        ("path", vec![str(path)]),
                        ("route", vec![str(route)]),
                        ("merchant", vec![str(merchant)]),
                        (
                            "recipients",
                            vec![BTerm::Set(to.into_iter().map(str).collect())],
                        ),
                        ("credential", vec![str(cred)]),
                        ("cost", vec![BTerm::Integer(n.0)]),
                        ("spent", vec![BTerm::Integer(n.1)]),
                        ("emails_sent", vec![BTerm::Integer(n.2)]),
                        ("llm_spent", vec![BTerm::Integer(n.3)]),
                        ("time", vec![BTerm::Date(unix_seconds(t0()) + secs)]),
                    ];
                    if let Some(a) = amount {
                        facts.push(("amount", vec![BTerm::Integer(a)]));
                    }
                    if let Some(c) = currency {
                        facts.push(("currency", vec![str(c)]));
                    }
                    if let Some(s) = subject {
                        facts.push(("subject", vec![str(s)]));
                    }
                    if approved {
                        facts.push(("approved", vec![BTerm::Bool(true)]));
                    }
                    facts
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The loaded world fails exactly the checks (same blocks, indices
        /// and printed rules) that biscuit's authorizer built from scratch
        /// fails, for every kind of block.
        #[test]
        fn loaded_world_decides_like_biscuit(requests in proptest::collection::vec(arb_facts(), 4)) {
            for token in tokens() {
                let world = TokenWorld::load(&token).expect("load");
                for facts in &requests {
                    prop_assert_eq!(loaded(&world, facts), reference(&token, facts), "{:?}", facts);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// The approval re-run (only the checks reading `approved`, unless
        /// rules exist) fails exactly what biscuit fails with the fact added.
        #[test]
        fn approval_rerun_decides_like_biscuit(requests in proptest::collection::vec(arb_facts(), 4)) {
            for token in tokens() {
                let world = TokenWorld::load(&token).expect("load");
                for facts in &requests {
                    let mut facts = facts.clone();
                    facts.retain(|(name, _)| *name != APPROVED);
                    let mut req = world.request();
                    for (name, terms) in &facts {
                        req.add(name, |req| {
                            terms.iter().map(|t| t.convert(&mut req.symbols)).collect()
                        });
                    }
                    let rerun = world
                        .failed_checks(&mut req)
                        .and_then(|first| world.failed_checks_approved(&mut req, &first))
                        .map(|failed| {
                            failed
                                .into_iter()
                                .map(|f| (f.0, f.1, world.check_source(f)))
                                .collect::<Vec<_>>()
                        });
                    facts.push((APPROVED, vec![BTerm::Bool(true)]));
                    prop_assert_eq!(rerun, reference(&token, &facts), "{:?}", facts);
                }
            }
        }
    }

    #[test]
    fn records_are_left_out_only_when_nothing_reads_them() {
        let tokens = tokens();
        let ours = TokenWorld::load(&tokens[0]).expect("load");
        assert!(
            ours.facts.is_empty(),
            "no check of ours reads a fact of the token"
        );
        // The seed grants no LLM: no check reads the cost, a request does not add it.
        let mut req = ours.request();
        req.add("cost", |_| vec![Term::Integer(5)]);
        assert!(req.added.is_empty());
        req.add("kind", |_| vec![Term::Integer(5)]);
        assert_eq!(req.added.len(), 1);
        // With a rule, every request fact is kept (a rule may read any).
        let ruled = TokenWorld::load(&tokens[5]).expect("load");
        let mut req = ruled.request();
        req.add("cost", |_| vec![Term::Integer(5)]);
        assert_eq!(req.added.len(), 1);
        let world = TokenWorld::load(&tokens[6]).expect("load");
        assert_eq!(world.facts.len(), 2, "a check reads the block records");
    }

    #[test]
    fn spare_symbol_tables_hold_only_the_tokens_strings() {
        let world = TokenWorld::load(&tokens()[1]).expect("load");
        let base = world.symbols.current_offset();
        let first_new = Term::Str((1024 + base) as SymbolIndex);
        let mut req = world.request();
        assert_eq!(req.str("a string no token has"), first_new);
        assert_eq!(req.symbols.current_offset(), base + 1);
        drop(req);
        assert_eq!(world.spare.lock().expect("lock").len(), 1);
        let mut req = world.request();
        assert_eq!(req.symbols.current_offset(), base);
        assert_eq!(req.str("another new string"), first_new);
        assert_eq!(req.symbols.get("a string no token has"), None);
    }

    #[test]
    fn the_opaque_blocks_are_exercised() {
        // The differential test only means something if the opaque blocks
        // both pass and fail: check a request of each outcome.
        let tokens = tokens();
        let opaque = &tokens[3];
        let world = TokenWorld::load(opaque).expect("load");
        let str = |v: &str| BTerm::Str(v.to_owned());
        let base = |host: &str, method: &str, secs: u64| -> Facts {
            vec![
                ("kind", vec![str("web")]),
                ("method", vec![str(method)]),
                ("host", vec![str(host)]),
                ("path", vec![str("/")]),
                ("time", vec![BTerm::Date(unix_seconds(t0()) + secs)]),
            ]
        };
        // Block 1's derived `site` is visible to block 2 only where it
        // trusts previous blocks: check 4 fails, check 2 passes.
        let ok = loaded(&world, &base("kayak.com", "GET", 60)).expect("runs");
        let ids: Vec<(u32, u32)> = ok.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(ids, vec![(2, 4)], "{ok:?}");
        let failed = loaded(&world, &base("kayak.com", "DELETE", 600)).expect("runs");
        let ids: Vec<(u32, u32)> = failed.iter().map(|f| (f.0, f.1)).collect();
        // Now also the root's scope and `check all` on the method, and the
        // expiry of block 2.
        assert_eq!(ids, vec![(0, 0), (1, 1), (2, 3), (2, 4)], "{failed:?}");
        assert_eq!(
            Ok(failed),
            reference(opaque, &base("kayak.com", "DELETE", 600))
        );
    }

    #[test]
    fn the_world_is_shared_across_threads() {
        fn is<T: Send + Sync>() {}
        is::<TokenWorld>();
    }
}
