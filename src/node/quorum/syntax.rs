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

use super::error::CommitRuleError;
use super::rule::{CommitRule, Method};
use crate::types::NodeId;
use std::fmt;
use std::str::FromStr;

impl fmt::Display for CommitRule {
    /// `FIRST k (a, b)` / `ANY k (a, b)`, quoting the names that need it:
    /// `FromStr` reads it back as the same rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (", self.method().keyword(), self.count())?;
        for (i, name) in self.standbys().iter().enumerate() {
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
