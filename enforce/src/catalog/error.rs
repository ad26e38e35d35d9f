//! Why a catalog file could not be loaded, and why a request the catalog
//! names could not be turned into an action.

/// Why a catalog file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("catalog rule {rule}: {problem}")]
    Rule { rule: String, problem: String },
}

/// Why a request the catalog names could not be turned into an action. Each
/// of these blocks the request: the proxy never guesses an amount or a
/// recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("request body over the {limit}-byte classification cap")]
    BodyTooLarge { limit: usize },
    #[error("request body is content-encoded ({0}); cannot read its fields")]
    BodyEncoded(String),
    /// The body's media type does not say how to read the rule's fields
    /// (missing, several, unknown, another format than the rule reads, a
    /// charset other than UTF-8).
    #[error("{0}")]
    ContentType(String),
    /// The path is spelled in a way some server routes elsewhere.
    #[error("path refused: {0}")]
    Path(#[from] capabilities::PathError),
    #[error("body is not valid JSON")]
    BadJson,
    #[error("body is not valid UTF-8")]
    BadUtf8,
    #[error("field {0} appears more than once")]
    DuplicateField(String),
    /// One field written in several spellings that servers read as one
    /// (`total` and `TOTAL`, `to` and `to[]`): which would the upstream use?
    #[error("field {field} appears more than once, spelled {}", spellings.join(", "))]
    FieldSpellings {
        field: String,
        spellings: Vec<String>,
    },
    #[error("field {0} is missing")]
    MissingField(String),
    #[error("field {field}: {problem}")]
    BadField { field: String, problem: String },
    /// A field the rule reads from the body named in the query, or one
    /// it reads from the query named in the body or either in a cookie:
    /// servers that merge them may act on the other copy (`merged.rs`).
    #[error("{elsewhere} also names field {field}: {who}")]
    QueryAndBody {
        field: String,
        elsewhere: &'static str,
        /// Which servers read that copy.
        who: &'static str,
    },
    /// A body that cannot be read to tell whether it names a field the rule
    /// reads from the query.
    #[error(
        "the body cannot be read to tell whether it also names field {field} ({why}); servers \
         that read the query and the body as one set of parameters may act on a copy there"
    )]
    BodyUnread { field: String, why: String },
    #[error("amount {0:?} is not an exact non-negative amount in cents")]
    BadAmount(String),
    #[error("email with no recipients the catalog can read")]
    NoRecipients,
    /// A method override naming another method than the request's: the
    /// token would decide one method and the server might run the other.
    #[error(
        "the request asks the server to run {requested} instead of {method} ({via}); openclaw \
         decides the method the server runs, and cannot know whether this server honours \
         the override"
    )]
    MethodOverride {
        method: String,
        requested: String,
        via: String,
    },
    /// A multipart or JSON body too malformed (or, for JSON, too deeply
    /// nested) to read that may hold a `_method`; `via` names the body.
    #[error(
        "{via} may ask the server to run another method than {method} (_method) and cannot be \
         read to tell; openclaw decides the method the server runs"
    )]
    MethodOverrideUnread { method: String, via: String },
}
