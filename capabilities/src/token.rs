//! Tokens: minting from a policy, parsing ([`UnverifiedToken`]), signature
//! verification into a [`Capability`], attenuation, sealing and the summary
//! `cap inspect` and `openclaw run` print.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use biscuit_auth::{
    Algorithm, Biscuit, BlockBuilder, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit,
};
use serde::Serialize;

use crate::datalog::{kind_name, record_from_source, BlockRecord, CheckKind};
use crate::policy::Policy;
use crate::world::TokenWorld;
use crate::CapabilityError;

/// Mints a token for `policy`, signed by the capability root key. A TTL in
/// the policy becomes an absolute expiry counted from `now`.
pub fn mint(
    policy: &Policy,
    root_private_key: &[u8; 32],
    now: SystemTime,
) -> Result<String, CapabilityError> {
    let policy = policy.clone().normalized()?;
    let record = BlockRecord::new(policy, now)?;
    let key = PrivateKey::from_bytes(root_private_key, Algorithm::Ed25519)
        .map_err(|e| CapabilityError::Key(e.to_string()))?;
    let keypair = KeyPair::from(&key);
    let block = record.block_builder()?;
    let token = Biscuit::builder()
        .merge(block)
        .build(&keypair)
        .map_err(|e| CapabilityError::Datalog(e.to_string()))?;
    token
        .to_base64()
        .map_err(|e| CapabilityError::Format(e.to_string()))
}

/// A parsed token whose signatures have not been checked. It can be
/// described (clearly marked unverified) and attenuated, never authorized.
#[derive(Clone)]
pub struct UnverifiedToken {
    inner: UnverifiedBiscuit,
}

/// A token whose signature chain verified against the root public key.
/// This is the only type that can authorize actions.
#[derive(Clone)]
pub struct Capability {
    pub(crate) inner: Biscuit,
    /// Per block: its record (when written by openclaw) and check kinds.
    pub(crate) blocks: Vec<BlockInfo>,
    /// The token's datalog, loaded once for every decision; the error (any
    /// decision blocks with it) if it cannot be loaded.
    pub(crate) world: Arc<Result<TokenWorld, String>>,
    revocation_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct BlockInfo {
    pub record: Option<BlockRecord>,
    pub checks: Vec<CheckKind>,
}

impl fmt::Debug for UnverifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedToken")
            .field(
                "revocation_ids",
                &hex_ids(&self.inner.revocation_identifiers()),
            )
            .finish()
    }
}

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capability")
            .field("revocation_ids", &self.revocation_ids)
            .finish()
    }
}

fn hex_ids(ids: &[Vec<u8>]) -> Vec<String> {
    ids.iter().map(hex::encode).collect()
}

fn public_key(bytes: &[u8; 32]) -> Result<PublicKey, CapabilityError> {
    PublicKey::from_bytes(bytes, Algorithm::Ed25519)
        .map_err(|e| CapabilityError::Key(e.to_string()))
}

fn block_sources(
    count: usize,
    source: impl Fn(usize) -> Result<String, biscuit_auth::error::Token>,
) -> Result<Vec<String>, CapabilityError> {
    (0..count)
        .map(|i| source(i).map_err(|e| CapabilityError::Format(e.to_string())))
        .collect()
}

fn block_infos(sources: &[String]) -> Vec<BlockInfo> {
    sources
        .iter()
        .map(|src| {
            let record = record_from_source(src);
            // Reasons are only trusted when the block's checks are exactly
            // the ones its record renders to (same count); otherwise the
            // failing check's datalog is the reason.
            let checks = match &record {
                Some(r) => {
                    let kinds = r.check_kinds();
                    let printed = src.matches("check if").count();
                    if printed == kinds.len() {
                        kinds
                    } else {
                        Vec::new()
                    }
                }
                None => Vec::new(),
            };
            BlockInfo { record, checks }
        })
        .collect()
}

impl UnverifiedToken {
    /// Parses a token's base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<UnverifiedToken, CapabilityError> {
        let inner = UnverifiedBiscuit::from_base64(text.trim())
            .map_err(|e| CapabilityError::Format(e.to_string()))?;
        Ok(UnverifiedToken { inner })
    }

    /// Checks every block's signature against the root public key.
    pub fn verify(self, root_public_key: &[u8; 32]) -> Result<Capability, CapabilityError> {
        let key = public_key(root_public_key)?;
        let inner = self
            .inner
            .verify(key)
            .map_err(|e| CapabilityError::Signature(e.to_string()))?;
        let sources = block_sources(inner.block_count(), |i| inner.print_block_source(i))?;
        let revocation_ids = hex_ids(&inner.revocation_identifiers());
        Ok(Capability {
            blocks: block_infos(&sources),
            world: Arc::new(TokenWorld::load(&inner)),
            inner,
            revocation_ids,
        })
    }

    /// [`Self::verify`], then refuses the token if any of its blocks'
    /// revocation ids (hex) is in `revoked`.
    pub fn verify_with_revocations<S: AsRef<str>>(
        self,
        root_public_key: &[u8; 32],
        revoked: &[S],
    ) -> Result<Capability, CapabilityError> {
        let cap = self.verify(root_public_key)?;
        cap.check_revocations(revoked)?;
        Ok(cap)
    }

    pub fn revocation_ids(&self) -> Vec<String> {
        hex_ids(&self.inner.revocation_identifiers())
    }

    /// What the token says, read WITHOUT checking its signature.
    pub fn summary_unverified(&self) -> Result<Summary, CapabilityError> {
        let sources = block_sources(self.inner.block_count(), |i| {
            self.inner.print_block_source(i)
        })?;
        Ok(Summary::build(&sources, self.revocation_ids(), false))
    }

    /// Appends a block rendered from `narrowing`; the result can only allow
    /// less. A TTL in `narrowing` counts from `now`.
    pub fn attenuate(
        &self,
        narrowing: &Policy,
        now: SystemTime,
    ) -> Result<String, CapabilityError> {
        attenuate(&self.inner, narrowing, now)
    }

    /// Seals the token: no block can be appended afterwards.
    pub fn seal(&self) -> Result<String, CapabilityError> {
        seal(&self.inner)
    }

    /// The root policy (authority block), as written when minted, unverified.
    pub fn root_policy_unverified(&self) -> Option<Policy> {
        let src = self.inner.print_block_source(0).ok()?;
        record_from_source(&src).map(|r| r.policy)
    }
}

/// What attenuating and sealing need from a biscuit, verified or not:
/// appending works without the root key, so both token types offer it.
trait Appendable: Sized {
    fn append_block(&self, block: BlockBuilder) -> Result<Self, biscuit_auth::error::Token>;
    fn sealed(&self) -> Result<Self, biscuit_auth::error::Token>;
    fn base64(&self) -> Result<String, biscuit_auth::error::Token>;
}

impl Appendable for Biscuit {
    fn append_block(&self, block: BlockBuilder) -> Result<Self, biscuit_auth::error::Token> {
        self.append(block)
    }
    fn sealed(&self) -> Result<Self, biscuit_auth::error::Token> {
        self.seal()
    }
    fn base64(&self) -> Result<String, biscuit_auth::error::Token> {
        self.to_base64()
    }
}

impl Appendable for UnverifiedBiscuit {
    fn append_block(&self, block: BlockBuilder) -> Result<Self, biscuit_auth::error::Token> {
        self.append(block)
    }
    fn sealed(&self) -> Result<Self, biscuit_auth::error::Token> {
        self.seal()
    }
    fn base64(&self) -> Result<String, biscuit_auth::error::Token> {
        self.to_base64()
    }
}

/// Appends a block rendered from `narrowing` (a TTL counts from `now`).
fn attenuate(
    token: &impl Appendable,
    narrowing: &Policy,
    now: SystemTime,
) -> Result<String, CapabilityError> {
    let record = BlockRecord::new(narrowing.clone().normalized()?, now)?;
    let token = token
        .append_block(record.block_builder()?)
        .map_err(append_error)?;
    token
        .base64()
        .map_err(|e| CapabilityError::Format(e.to_string()))
}

fn seal(token: &impl Appendable) -> Result<String, CapabilityError> {
    let token = token.sealed().map_err(append_error)?;
    token
        .base64()
        .map_err(|e| CapabilityError::Format(e.to_string()))
}

fn append_error(e: biscuit_auth::error::Token) -> CapabilityError {
    match e {
        biscuit_auth::error::Token::AppendOnSealed | biscuit_auth::error::Token::AlreadySealed => {
            CapabilityError::Sealed
        }
        biscuit_auth::error::Token::Format(biscuit_auth::error::Format::SealedSignature) => {
            CapabilityError::Sealed
        }
        other => CapabilityError::Format(other.to_string()),
    }
}

impl Capability {
    /// Revocation ids (hex) of every block, root first.
    pub fn revocation_ids(&self) -> Vec<String> {
        self.revocation_ids.clone()
    }

    /// Fails with [`CapabilityError::Revoked`] if any block id is in `revoked`.
    pub fn check_revocations<S: AsRef<str>>(&self, revoked: &[S]) -> Result<(), CapabilityError> {
        for id in &self.revocation_ids {
            if revoked
                .iter()
                .any(|r| r.as_ref().trim().eq_ignore_ascii_case(id))
            {
                return Err(CapabilityError::Revoked { id: id.clone() });
            }
        }
        Ok(())
    }

    /// The earliest expiry any block sets, if any does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.blocks
            .iter()
            .filter_map(|b| b.record.as_ref().and_then(BlockRecord::expiry_time))
            .min()
    }

    pub fn summary(&self) -> Summary {
        let sources: Vec<String> = (0..self.inner.block_count())
            .map(|i| self.inner.print_block_source(i).unwrap_or_default())
            .collect();
        Summary::build(&sources, self.revocation_ids.clone(), true)
    }

    /// The root policy as minted (the authority block's record).
    pub fn root_policy(&self) -> Option<&Policy> {
        self.blocks
            .first()
            .and_then(|b| b.record.as_ref())
            .map(|r| &r.policy)
    }

    /// The LLM budget in micro-USD: the smallest `budget_usd` any block
    /// written by openclaw sets (attenuation only narrows it), if any does.
    pub fn llm_budget_micro_usd(&self) -> Option<u64> {
        self.blocks
            .iter()
            .filter_map(|b| b.record.as_ref())
            .filter_map(|r| r.policy.llm.as_ref())
            .filter_map(|l| l.budget_usd)
            .map(|b| b.0)
            .min()
    }

    /// Whether some block written by openclaw names `host` among its LLM
    /// providers. For refusing what only an LLM grant could cover and the
    /// proxy cannot meter (a WebSocket to a provider), so every block
    /// counts, not only the ones that still allow LLM calls.
    pub fn names_llm_provider(&self, host: &crate::Host) -> bool {
        self.blocks
            .iter()
            .filter_map(|b| b.record.as_ref())
            .filter_map(|r| r.policy.llm.as_ref())
            .flat_map(|l| &l.providers)
            .any(|p| crate::HostPattern::parse(p).is_ok_and(|p| p.matches(host)))
    }

    /// [`UnverifiedToken::attenuate`] on a verified token.
    pub fn attenuate(
        &self,
        narrowing: &Policy,
        now: SystemTime,
    ) -> Result<String, CapabilityError> {
        attenuate(&self.inner, narrowing, now)
    }

    /// [`UnverifiedToken::seal`] on a verified token.
    pub fn seal(&self) -> Result<String, CapabilityError> {
        seal(&self.inner)
    }

    pub fn to_base64(&self) -> Result<String, CapabilityError> {
        self.inner
            .to_base64()
            .map_err(|e| CapabilityError::Format(e.to_string()))
    }

    /// Each block's datalog, for `cap inspect -v`.
    pub fn datalog(&self) -> Vec<String> {
        (0..self.inner.block_count())
            .map(|i| self.inner.print_block_source(i).unwrap_or_default())
            .collect()
    }
}

/// What a token allows, for people: counts, one line per grant and per
/// constraint, expiry and revocation ids.
///
/// Counting: a *grant* is a kind of action the token lets through (a `web`,
/// `payment`, `email`, `login`, `llm` or `websocket` section present in the root block and
/// in every attenuation block); a *constraint* is a token-wide condition on
/// top of the grants (each expiry and each approval rule, in any block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub grants: usize,
    pub constraints: usize,
    pub grant_lines: Vec<String>,
    pub constraint_lines: Vec<String>,
    /// Number of blocks (1 = as minted).
    pub blocks: usize,
    /// RFC 3339 expiry (earliest of all blocks), if any.
    pub expires_at: Option<String>,
    pub revocation_ids: Vec<String>,
    pub signature_verified: bool,
    /// Blocks not written by openclaw: enforced, but not described here.
    pub opaque_blocks: Vec<usize>,
}

impl Summary {
    fn build(sources: &[String], revocation_ids: Vec<String>, verified: bool) -> Summary {
        let records: Vec<Option<BlockRecord>> =
            sources.iter().map(|s| record_from_source(s)).collect();
        let opaque_blocks: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none())
            .map(|(i, _)| i)
            .collect();
        let known: Vec<(usize, &BlockRecord)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
            .collect();
        let mut grant_lines = Vec::new();
        let mut constraint_lines = Vec::new();
        let mut grants = 0;
        let mut constraints = 0;
        if let Some((_, root)) = known.first().filter(|(i, _)| *i == 0) {
            let kinds = root.policy.grant_kinds();
            grants = kinds
                .iter()
                .filter(|k| {
                    known
                        .iter()
                        .all(|(_, r)| r.policy.grant_kinds().contains(k))
                })
                .count();
        }
        for (i, record) in &known {
            let prefix = if *i == 0 {
                String::new()
            } else {
                format!("[block {i}] ")
            };
            grant_lines.extend(
                record
                    .policy
                    .grant_lines()
                    .into_iter()
                    .map(|l| format!("{prefix}{l}")),
            );
            if let Some(t) = record.expiry_time() {
                constraints += 1;
                constraint_lines.push(format!("{prefix}expires {}", humantime::format_rfc3339(t)));
            }
            for rule in record.policy.approval_rules() {
                constraints += 1;
                let currency = record
                    .policy
                    .payment
                    .as_ref()
                    .map_or("USD", |p| p.currency.as_str());
                let kind = rule.kind;
                let mut what = match rule.above {
                    Some(a) if kind == crate::ActionType::Llm => {
                        format!("llm calls costing more than {}", a.display("USD"))
                    }
                    Some(a) => format!("{}s above {}", kind_name(kind), a.display(currency)),
                    None if rule.once_spent.is_some() => format!("{} calls", kind_name(kind)),
                    None => format!("all {} actions", kind_name(kind)),
                };
                if let Some(spent) = rule.once_spent {
                    what.push_str(&format!(" once the session's llm spend reaches {spent}"));
                }
                constraint_lines.push(format!("{prefix}approval: {what} need a human"));
            }
        }
        let expires_at = known
            .iter()
            .filter_map(|(_, r)| r.expiry_time())
            .min()
            .map(|t| humantime::format_rfc3339(t).to_string());
        Summary {
            grants,
            constraints,
            grant_lines,
            constraint_lines,
            blocks: sources.len(),
            expires_at,
            revocation_ids,
            signature_verified: verified,
            opaque_blocks,
        }
    }
}

impl fmt::Display for Summary {
    /// `4 grants, 2 constraints`, as `openclaw run` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, word: &str| {
            if n == 1 {
                format!("{n} {word}")
            } else {
                format!("{n} {word}s")
            }
        };
        write!(
            f,
            "{}, {}",
            plural(self.grants, "grant"),
            plural(self.constraints, "constraint")
        )
    }
}
