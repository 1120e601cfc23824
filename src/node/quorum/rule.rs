//! The commit rule: which standbys must confirm a write before the primary
//! acknowledges it, written as PostgreSQL writes `synchronous_standby_names`.
//!
//! ```text
//! FIRST k (a, b, ...)   the first k named standbys that count, in this order
//! ANY k (a, b, ...)     any k of the named standbys that count (a quorum)
//! k (a, b, ...)         FIRST k
//! a, b, ...             FIRST 1
//! ```
//!
//! Keywords are case-insensitive; names are taken as written (node ids
//! compare exactly everywhere in walrep, unlike PostgreSQL's
//! case-insensitive application names). An unquoted name is letters,
//! digits, `_`, `-` and `.`; any other name, or one spelled like a keyword,
//! is double-quoted, with `""` for a quote inside it. PostgreSQL's `*`
//! (any standby) is refused: promotion must know which nodes may hold
//! acknowledged writes.

use crate::types::NodeId;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// How the rule picks the standbys that must confirm a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Method {
    /// The first k standbys that count, in the rule's order (priority).
    First,
    /// Any k standbys that count (a quorum).
    Any,
}

impl Method {
    /// The keyword, as `Display` writes it.
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            Method::First => "FIRST",
            Method::Any => "ANY",
        }
    }
}

/// `FIRST k (names)` or `ANY k (names)`: always at least one name, no name
/// twice, and `1 <= k <= names.len()` (`CommitRule::new` and `FromStr`
/// refuse anything else).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CommitRule {
    method: Method,
    count: usize,
    standbys: Vec<NodeId>,
}

/// What is wrong with a commit rule, where (`at`: the 1-based character
/// column in the text), and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommitRuleError {
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
    /// The rule names the node it is checked for.
    #[error(
        "the rule names this node ({name}): it lists the standbys this node waits for as a primary, so name only its peers"
    )]
    NamesThisNode {
        /// This node.
        name: String,
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

impl CommitRule {
    /// `method k (standbys)`, or why it is not a rule.
    pub(crate) fn new(
        method: Method,
        count: usize,
        standbys: Vec<NodeId>,
    ) -> Result<CommitRule, CommitRuleError> {
        let columns = vec![0; standbys.len()];
        CommitRule::checked(method, count, standbys, &columns)
    }

    /// `ANY 1 (peer)`: the pair's rule (the primary waits for its one standby).
    pub(crate) fn pair(peer: &NodeId) -> CommitRule {
        CommitRule::new(Method::Any, 1, vec![peer.clone()]).expect("one name, k = 1")
    }

    /// `columns[i]`: where `standbys[i]` appears in the text (0 when built
    /// in code), for the duplicate's message.
    fn checked(
        method: Method,
        count: usize,
        standbys: Vec<NodeId>,
        columns: &[usize],
    ) -> Result<CommitRule, CommitRuleError> {
        for (i, name) in standbys.iter().enumerate() {
            if let Some(j) = standbys[..i].iter().position(|n| n == name) {
                return Err(CommitRuleError::DuplicateName {
                    name: name.0.clone(),
                    first: columns[j],
                    again: columns[i],
                });
            }
        }
        if count == 0 {
            return Err(CommitRuleError::ZeroCount);
        }
        if count > standbys.len() {
            return Err(CommitRuleError::CountAboveList {
                count,
                named: standbys.len(),
            });
        }
        Ok(CommitRule {
            method,
            count,
            standbys,
        })
    }

    /// FIRST or ANY.
    pub(crate) fn method(&self) -> Method {
        self.method
    }

    /// k: how many standbys must confirm a write (fewer when fewer count,
    /// see `effective_count`).
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The named standbys, in the rule's order.
    pub(crate) fn standbys(&self) -> &[NodeId] {
        &self.standbys
    }

    /// A standby's priority as PostgreSQL reports it: 0 for a standby the
    /// rule does not name (it never counts and never promotes); with
    /// FIRST its place in the list from 1 (lower waits first); with ANY 1
    /// for every named standby.
    pub(crate) fn priority(&self, standby: &NodeId) -> usize {
        match self.standbys.iter().position(|n| n == standby) {
            None => 0,
            Some(_) if self.method == Method::Any => 1,
            Some(i) => i + 1,
        }
    }

    /// The members of `sync_set` the rule names, in the rule's order: the
    /// standbys that count. A member the rule does not name counts for
    /// nothing, as an asynchronous standby.
    pub(crate) fn counted<'a>(
        &'a self,
        sync_set: &'a BTreeSet<NodeId>,
    ) -> impl Iterator<Item = &'a NodeId> + 'a {
        self.standbys.iter().filter(|n| sync_set.contains(*n))
    }

    /// k' = min(k, standbys that count): how many must confirm a write with
    /// this sync set. 0 means the primary acknowledges alone.
    pub(crate) fn effective_count(&self, sync_set: &BTreeSet<NodeId>) -> usize {
        self.count.min(self.counted(sync_set).count())
    }

    /// Checks the rule for the primary `me` of a cluster whose other data
    /// nodes are `peers`: it names only peers.
    pub(crate) fn validate_for(
        &self,
        me: &NodeId,
        peers: &[NodeId],
    ) -> Result<(), CommitRuleError> {
        for name in &self.standbys {
            if name == me {
                return Err(CommitRuleError::NamesThisNode {
                    name: name.0.clone(),
                });
            }
            if !peers.contains(name) {
                return Err(CommitRuleError::NotAPeer {
                    name: name.0.clone(),
                    peers: peers
                        .iter()
                        .map(|p| p.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for CommitRule {
    /// `FIRST k (a, b)` / `ANY k (a, b)`, quoting the names that need it:
    /// `FromStr` reads it back as the same rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (", self.method.keyword(), self.count)?;
        for (i, name) in self.standbys.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write_name(f, &name.0)?;
        }
        f.write_str(")")
    }
}

fn write_name(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    let bare = !name.is_empty() && name.chars().all(unquoted_char) && keyword(name).is_none();
    if bare {
        return f.write_str(name);
    }
    write!(f, "\"{}\"", name.replace('"', "\"\""))
}

fn unquoted_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn keyword(word: &str) -> Option<Method> {
    if word.eq_ignore_ascii_case("first") {
        Some(Method::First)
    } else if word.eq_ignore_ascii_case("any") {
        Some(Method::Any)
    } else {
        None
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word { text: String, quoted: bool },
    Open,
    Close,
    Comma,
    Star,
}

impl Token {
    /// The token in words, for "found ..." in errors.
    fn describe(&self) -> String {
        match self {
            Token::Word { text, .. } => format!("{text:?}"),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Comma => "`,`".into(),
            Token::Star => "`*`".into(),
        }
    }

    fn as_number(&self) -> Option<&str> {
        match self {
            Token::Word {
                text,
                quoted: false,
            } if text.bytes().all(|b| b.is_ascii_digit()) => Some(text),
            _ => None,
        }
    }

    fn as_keyword(&self) -> Option<(Method, &str)> {
        match self {
            Token::Word {
                text,
                quoted: false,
            } => keyword(text).map(|m| (m, text.as_str())),
            _ => None,
        }
    }
}

/// Tokens with their 1-based columns.
fn lex(text: &str) -> Result<Vec<(usize, Token)>, CommitRuleError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().enumerate().map(|(i, c)| (i + 1, c)).peekable();
    while let Some((at, c)) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            '*' => Token::Star,
            '"' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        None => return Err(CommitRuleError::UnclosedQuote { at }),
                        Some((_, '"')) if chars.next_if(|(_, c)| *c == '"').is_some() => {
                            name.push('"')
                        }
                        Some((_, '"')) => break,
                        Some((_, c)) => name.push(c),
                    }
                }
                if name.is_empty() {
                    return Err(CommitRuleError::EmptyName { at });
                }
                Token::Word {
                    text: name,
                    quoted: true,
                }
            }
            c if unquoted_char(c) => {
                let mut word = String::from(c);
                while let Some((_, c)) = chars.next_if(|(_, c)| unquoted_char(*c)) {
                    word.push(c);
                }
                Token::Word {
                    text: word,
                    quoted: false,
                }
            }
            found => return Err(CommitRuleError::UnquotedCharacter { at, found }),
        };
        tokens.push((at, token));
    }
    Ok(tokens)
}

/// Reads tokens left to right; `end` is the column just past the text, for
/// errors about what is missing at the end.
struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.next + ahead).map(|(_, t)| t)
    }

    /// Where the next token starts, or the end of the text.
    fn column(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(at, _)| *at)
    }

    fn bump(&mut self) -> Option<Token> {
        let token = self.peek().cloned();
        self.next += 1;
        token
    }

    /// The whole rule.
    fn rule(&mut self) -> Result<CommitRule, CommitRuleError> {
        let Some(first) = self.peek() else {
            return Err(CommitRuleError::Empty);
        };
        let method = match first.as_keyword() {
            Some((method, spelled)) => {
                let (at, spelled) = (self.column(), spelled.to_string());
                self.bump();
                match self.peek() {
                    // `first, b`: a standby meant by that name.
                    Some(Token::Comma) => {
                        return Err(CommitRuleError::KeywordAsName { at, word: spelled });
                    }
                    Some(t) if t.as_number().is_some() => method,
                    _ => {
                        return Err(CommitRuleError::MissingCount {
                            at: self.column(),
                            keyword: spelled,
                        });
                    }
                }
            }
            None if first.as_number().is_some()
                && matches!(self.peek_at(1), Some(Token::Open | Token::Word { .. })) =>
            {
                Method::First
            }
            None if *first == Token::Open => {
                return Err(CommitRuleError::MisplacedList { at: self.column() });
            }
            None => {
                let (names, columns) = self.names(None)?;
                return CommitRule::checked(Method::First, 1, names, &columns);
            }
        };
        let count_at = self.column();
        let count_text = self
            .bump()
            .and_then(|t| t.as_number().map(str::to_string))
            .expect("a number, peeked above");
        let count = count_text
            .parse::<usize>()
            .map_err(|_| CommitRuleError::CountTooLarge {
                at: count_at,
                text: count_text.clone(),
            })?;
        let open_at = self.column();
        if self.bump() != Some(Token::Open) {
            return Err(CommitRuleError::MissingList {
                at: open_at,
                count: count_text,
            });
        }
        if self.peek() == Some(&Token::Close) {
            return Err(CommitRuleError::EmptyList { at: open_at });
        }
        let (names, columns) = self.names(Some(open_at))?;
        if self.peek().is_some() {
            let at = self.column();
            let text = self.text.chars().skip(at - 1).collect::<String>();
            return Err(CommitRuleError::TrailingText {
                at,
                text: text.trim_end().to_string(),
            });
        }
        CommitRule::checked(method, count, names, &columns)
    }

    /// Names separated by commas, up to the `)` closing the list opened at
    /// column `open` (consumed), or to the end of the text for a bare list
    /// (`open` is `None`). Returns the names and their columns.
    fn names(&mut self, open: Option<usize>) -> Result<(Vec<NodeId>, Vec<usize>), CommitRuleError> {
        let (mut names, mut columns) = (Vec::new(), Vec::new());
        loop {
            let at = self.column();
            match self.bump() {
                Some(Token::Word { text, quoted }) => {
                    if !quoted && keyword(&text).is_some() {
                        return Err(CommitRuleError::KeywordAsName { at, word: text });
                    }
                    names.push(NodeId(text));
                    columns.push(at);
                }
                Some(Token::Star) => return Err(CommitRuleError::Wildcard { at }),
                Some(Token::Close) if open.is_none() => {
                    return Err(CommitRuleError::UnopenedList { at });
                }
                None if open.is_some() => {
                    return Err(CommitRuleError::UnclosedList {
                        at: open.unwrap_or(at),
                    });
                }
                other => {
                    return Err(CommitRuleError::MissingName {
                        at,
                        found: other.map_or("the end of the rule".into(), |t| t.describe()),
                    });
                }
            }
            let at = self.column();
            match (self.bump(), open) {
                (Some(Token::Comma), _) => continue,
                (Some(Token::Close), Some(_)) | (None, None) => return Ok((names, columns)),
                (Some(Token::Close), None) => return Err(CommitRuleError::UnopenedList { at }),
                (None, Some(open)) => return Err(CommitRuleError::UnclosedList { at: open }),
                (Some(Token::Word { text, .. }), _) => {
                    return Err(CommitRuleError::MissingComma { at, name: text });
                }
                (Some(Token::Star), _) => return Err(CommitRuleError::Wildcard { at }),
                (Some(Token::Open), _) => return Err(CommitRuleError::MisplacedList { at }),
            }
        }
    }
}

impl FromStr for CommitRule {
    type Err = CommitRuleError;

    fn from_str(text: &str) -> Result<CommitRule, CommitRuleError> {
        Parser {
            text,
            tokens: lex(text)?,
            next: 0,
            end: text.chars().count() + 1,
        }
        .rule()
    }
}
