//! What is wrong with a commit rule, in words an operator can act on.

/// What is wrong with a commit rule, where (`at`: the 1-based character
/// column in the text), and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitRuleError {
    /// Nothing but whitespace.
    #[error(
        "the commit rule is empty: name the standbys to wait for, e.g. `ANY 1 (b, c)` or `FIRST 1 (b, c)`"
    )]
    Empty,
    /// `FIRST 0 (...)`.
    #[error(
        "the rule waits for 0 standbys: the number must be at least 1 (commit mode async is how to wait for none)"
    )]
    ZeroCount,
    /// `ANY 3 (a, b)`.
    #[error(
        "the rule waits for {count} standbys but names only {named}: name at least {count} or wait for at most {named}"
    )]
    CountAboveList {
        /// The number the rule waits for.
        count: usize,
        /// How many standbys it names.
        named: usize,
    },
    /// The same name twice.
    #[error(
        "standby {name:?} is named twice (columns {first} and {again}): name each standby once"
    )]
    DuplicateName {
        /// The name.
        name: String,
        /// Where it first appears.
        first: usize,
        /// Where it appears again.
        again: usize,
    },
    /// `()`.
    #[error(
        "column {at}: the list `()` names no standby: name at least one inside the parentheses"
    )]
    EmptyList {
        /// The `(`.
        at: usize,
    },
    /// A `(` with no `)`.
    #[error("column {at}: this `(` is never closed: end the list with `)`")]
    UnclosedList {
        /// The `(`.
        at: usize,
    },
    /// A `)` that closes nothing.
    #[error(
        "column {at}: this `)` closes no `(`: remove it, or write the list as `k (a, b)` or `ANY k (a, b)`"
    )]
    UnopenedList {
        /// The `)`.
        at: usize,
    },
    /// Something after the list's `)`.
    #[error(
        "column {at}: {text:?} follows the list's closing `)`: the rule ends with the list; remove it"
    )]
    TrailingText {
        /// Where the extra text starts.
        at: usize,
        /// The extra text.
        text: String,
    },
    /// `ANY (a, b)`, `FIRST x (a)`.
    #[error(
        "column {at}: `{keyword}` must be followed by the number of standbys to wait for and the list, e.g. `{keyword} 1 (b, c)`"
    )]
    MissingCount {
        /// Where the number should be.
        at: usize,
        /// `FIRST` or `ANY`, as the rule spelled it.
        keyword: String,
    },
    /// `ANY 2 a, b`.
    #[error(
        "column {at}: the number {count} must be followed by the parenthesised list of standbys, e.g. `{count} (b, c)`"
    )]
    MissingList {
        /// Where the `(` should be.
        at: usize,
        /// The number.
        count: String,
    },
    /// `(a, b)` with no number before it, or `a (b)`.
    #[error(
        "column {at}: a list in parentheses must follow the number of standbys to wait for, e.g. `ANY 1 (b, c)` or `FIRST 1 (b, c)`"
    )]
    MisplacedList {
        /// The `(`.
        at: usize,
    },
    /// `(a,,b)`, `(a,)`, `(,a)`.
    #[error("column {at}: expected a standby name, found {found}")]
    MissingName {
        /// Where the name should be.
        at: usize,
        /// What was there instead, in words.
        found: String,
    },
    /// `(a b)`.
    #[error(
        "column {at}: {name:?} follows another name without a comma: separate standby names with `,`"
    )]
    MissingComma {
        /// Where the second name starts.
        at: usize,
        /// The second name.
        name: String,
    },
    /// A `"` with no closing `"`.
    #[error(
        "column {at}: this `\"` is never closed: end the quoted name with `\"` (write `\"\"` for a quote inside it)"
    )]
    UnclosedQuote {
        /// The opening `"`.
        at: usize,
    },
    /// `""`.
    #[error("column {at}: `\"\"` is an empty name: a standby name has at least one character")]
    EmptyName {
        /// The opening `"`.
        at: usize,
    },
    /// A character no unquoted name holds, outside quotes.
    #[error("column {at}: {found:?} cannot appear in an unquoted name: double-quote the name")]
    UnquotedCharacter {
        /// Where the character is.
        at: usize,
        /// The character.
        found: char,
    },
    /// PostgreSQL's `*`.
    #[error(
        "column {at}: `*` (any standby) is not supported: name each standby, since a promotion must know which nodes may hold acknowledged writes"
    )]
    Wildcard {
        /// The `*`.
        at: usize,
    },
    /// `first` or `any` where a name belongs.
    #[error(
        "column {at}: `{word}` is a keyword: double-quote a standby of that name, `\"{word}\"`"
    )]
    KeywordAsName {
        /// Where the keyword is.
        at: usize,
        /// The keyword, as written.
        word: String,
    },
    /// A number of standbys that does not fit in a `usize`.
    #[error("column {at}: {text} is not a usable number of standbys: it is far above any list")]
    CountTooLarge {
        /// Where the number is.
        at: usize,
        /// As written.
        text: String,
    },
    /// The rule names a node outside the cluster.
    #[error(
        "the rule names {name:?}, which is not a peer of this node (peers: {peers}): correct the name or add the node to the cluster"
    )]
    NotAPeer {
        /// The unknown name.
        name: String,
        /// The peers, comma-separated.
        peers: String,
    },
}
