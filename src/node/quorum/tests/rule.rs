//! The commit rule's syntax, its errors and its checks.

use super::super::{CommitRule, CommitRuleError, Method};
use super::{ids, rule, set};
use crate::types::NodeId;
use proptest::prelude::*;

#[test]
fn keywords_are_case_insensitive() {
    for text in ["FIRST 2 (a, b, c)", "first 2 (a,b,c)", "First 2(a , b ,c)"] {
        assert_eq!(rule(text), rule("FIRST 2 (a, b, c)"), "{text}");
        assert_eq!(rule(text).method(), Method::First);
    }
    for text in ["ANY 1 (a, b)", "any 1 (a, b)", "aNy 1 ( a , b )"] {
        assert_eq!(rule(text).method(), Method::Any, "{text}");
        assert_eq!(rule(text).count(), 1);
        assert_eq!(rule(text).standbys(), ids(&["a", "b"]).as_slice());
    }
}

#[test]
fn a_number_and_a_list_mean_first() {
    assert_eq!(rule("2 (a, b, c)"), rule("FIRST 2 (a, b, c)"));
}

#[test]
fn a_bare_list_means_first_1() {
    assert_eq!(rule("a, b"), rule("FIRST 1 (a, b)"));
    assert_eq!(rule("a"), rule("FIRST 1 (a)"));
    // A number alone, or followed by a comma, is a name.
    assert_eq!(rule("2").standbys(), ids(&["2"]).as_slice());
    assert_eq!(rule("2, 3"), rule("FIRST 1 (\"2\", \"3\")"));
}

#[test]
fn names_are_taken_as_written_and_quotes_hold_anything() {
    let r = rule(r#"ANY 2 (Node-A, "node b", "say ""hi""", "first", n.1_x)"#);
    assert_eq!(
        r.standbys(),
        ids(&["Node-A", "node b", "say \"hi\"", "first", "n.1_x"]).as_slice()
    );
    assert_ne!(rule("a"), rule("A"), "names are case-sensitive");
}

#[test]
fn display_is_canonical_and_quotes_only_what_needs_it() {
    assert_eq!(rule("first 2 (a,b)").to_string(), "FIRST 2 (a, b)");
    assert_eq!(rule("a, b").to_string(), "FIRST 1 (a, b)");
    assert_eq!(
        rule(r#"any 1 ("node b", "say ""hi""", "First", "plain", "é")"#).to_string(),
        r#"ANY 1 ("node b", "say ""hi""", "First", plain, é)"#
    );
}

#[test]
fn new_refuses_what_parsing_refuses() {
    let ab = ids(&["a", "b"]);
    assert_eq!(
        CommitRule::new(Method::Any, 0, ab.clone()),
        Err(CommitRuleError::ZeroCount)
    );
    assert_eq!(
        CommitRule::new(Method::Any, 3, ab.clone()),
        Err(CommitRuleError::CountAboveList { count: 3, named: 2 })
    );
    assert!(matches!(
        CommitRule::new(Method::First, 1, ids(&["a", "a"])),
        Err(CommitRuleError::DuplicateName { .. })
    ));
    assert_eq!(
        CommitRule::new(Method::Any, 2, ab).map(|r| r.to_string()),
        Ok("ANY 2 (a, b)".into())
    );
    assert_eq!(
        CommitRule::pair(&NodeId::from("b")).to_string(),
        "ANY 1 (b)"
    );
}

/// Every error, with its exact message: what is wrong, where, what to
/// write instead.
#[test]
fn each_mistake_gets_its_own_precise_error() {
    let cases: &[(&str, &str)] = &[
        (
            "",
            "the commit rule is empty: name the standbys to wait for, e.g. `ANY 1 (b, c)` or `FIRST 1 (b, c)`",
        ),
        (
            "  \t ",
            "the commit rule is empty: name the standbys to wait for, e.g. `ANY 1 (b, c)` or `FIRST 1 (b, c)`",
        ),
        (
            "FIRST 0 (a)",
            "the rule waits for 0 standbys: the number must be at least 1 (commit mode async is how to wait for none)",
        ),
        (
            "ANY 3 (a, b)",
            "the rule waits for 3 standbys but names only 2: name at least 3 or wait for at most 2",
        ),
        (
            "ANY 1 (a, b, a)",
            "standby \"a\" is named twice (columns 8 and 14): name each standby once",
        ),
        (
            "a, \"a\"",
            "standby \"a\" is named twice (columns 1 and 4): name each standby once",
        ),
        (
            "ANY 1 ()",
            "column 7: the list `()` names no standby: name at least one inside the parentheses",
        ),
        (
            "ANY 1 (a, b",
            "column 7: this `(` is never closed: end the list with `)`",
        ),
        (
            "ANY 1 (a,",
            "column 7: this `(` is never closed: end the list with `)`",
        ),
        (
            "a, b)",
            "column 5: this `)` closes no `(`: remove it, or write the list as `k (a, b)` or `ANY k (a, b)`",
        ),
        (
            ")",
            "column 1: this `)` closes no `(`: remove it, or write the list as `k (a, b)` or `ANY k (a, b)`",
        ),
        (
            "ANY 1 (a) (b) ",
            "column 11: \"(b)\" follows the list's closing `)`: the rule ends with the list; remove it",
        ),
        (
            "ANY (a)",
            "column 5: `ANY` must be followed by the number of standbys to wait for and the list, e.g. `ANY 1 (b, c)`",
        ),
        (
            "first",
            "column 6: `first` must be followed by the number of standbys to wait for and the list, e.g. `first 1 (b, c)`",
        ),
        (
            "ANY 2 a, b",
            "column 7: the number 2 must be followed by the parenthesised list of standbys, e.g. `2 (b, c)`",
        ),
        (
            "2 a",
            "column 3: the number 2 must be followed by the parenthesised list of standbys, e.g. `2 (b, c)`",
        ),
        (
            "FIRST 2",
            "column 8: the number 2 must be followed by the parenthesised list of standbys, e.g. `2 (b, c)`",
        ),
        (
            "(a, b)",
            "column 1: a list in parentheses must follow the number of standbys to wait for, e.g. `ANY 1 (b, c)` or `FIRST 1 (b, c)`",
        ),
        (
            "a (b)",
            "column 3: a list in parentheses must follow the number of standbys to wait for, e.g. `ANY 1 (b, c)` or `FIRST 1 (b, c)`",
        ),
        (
            "ANY 1 (a,,b)",
            "column 10: expected a standby name, found `,`",
        ),
        (
            "ANY 1 (a,)",
            "column 10: expected a standby name, found `)`",
        ),
        (
            "ANY 1 (, a)",
            "column 8: expected a standby name, found `,`",
        ),
        (
            "a,",
            "column 3: expected a standby name, found the end of the rule",
        ),
        (
            "ANY 1 (a b)",
            "column 10: \"b\" follows another name without a comma: separate standby names with `,`",
        ),
        (
            "ANY 1 (\"a)",
            "column 8: this `\"` is never closed: end the quoted name with `\"` (write `\"\"` for a quote inside it)",
        ),
        (
            "ANY 1 (\"\")",
            "column 8: `\"\"` is an empty name: a standby name has at least one character",
        ),
        (
            "ANY 1 (a;b)",
            "column 9: ';' cannot appear in an unquoted name: double-quote the name",
        ),
        (
            "ANY 1 (*)",
            "column 8: `*` (any standby) is not supported: name each standby, since a promotion must know which nodes may hold acknowledged writes",
        ),
        (
            "*",
            "column 1: `*` (any standby) is not supported: name each standby, since a promotion must know which nodes may hold acknowledged writes",
        ),
        (
            "ANY 1 (a, any)",
            "column 11: `any` is a keyword: double-quote a standby of that name, `\"any\"`",
        ),
        (
            "First, b",
            "column 1: `First` is a keyword: double-quote a standby of that name, `\"First\"`",
        ),
        (
            "ANY 99999999999999999999999 (a)",
            "column 5: 99999999999999999999999 is not a usable number of standbys: it is far above any list",
        ),
    ];
    for (text, message) in cases {
        let err = text
            .parse::<CommitRule>()
            .expect_err(&format!("{text:?} must be refused"));
        assert_eq!(err.to_string(), *message, "for {text:?}");
    }
}

#[test]
fn columns_count_characters_not_bytes() {
    let err = "ANY 1 (é ü)".parse::<CommitRule>().unwrap_err();
    assert_eq!(
        err,
        CommitRuleError::MissingComma {
            at: 10,
            name: "ü".into()
        }
    );
}

#[test]
fn the_rule_names_only_nodes_of_the_cluster_and_may_name_every_one() {
    let peers = ids(&["b", "c"]);
    let me = NodeId::from("a");
    assert_eq!(rule("ANY 1 (b, c)").validate_for(&me, &peers), Ok(()));
    // One text for every node: a's own name is allowed, and never counts
    // while a is the primary (it is not in its own sync set).
    let everyone = rule("ANY 1 (a, b, c)");
    assert_eq!(everyone.validate_for(&me, &peers), Ok(()));
    assert_eq!(everyone.effective_count(&set(&["b", "c"])), 1);
    assert_eq!(
        rule("FIRST 1 (b, d)")
            .validate_for(&me, &peers)
            .unwrap_err()
            .to_string(),
        "the rule names \"d\", which is not a peer of this node (peers: b, c): correct the name or add the node to the cluster"
    );
}

#[test]
fn priority_is_the_place_in_a_first_list_1_in_an_any_list_0_unnamed() {
    let first = rule("FIRST 1 (c, a, b)");
    let any = rule("ANY 1 (c, a, b)");
    let [a, b, c, d] = ["a", "b", "c", "d"].map(NodeId::from);
    assert_eq!([&a, &b, &c, &d].map(|n| first.priority(n)), [2, 3, 1, 0]);
    assert_eq!([&a, &b, &c, &d].map(|n| any.priority(n)), [1, 1, 1, 0]);
}

/// Names of every kind: plain, keywords, digits, spaces, quotes, any
/// printable character.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_.-]{0,5}",
        "(first|any|FIRST|Any)",
        "[0-9]{1,3}",
        "[ -~]{1,6}",
        "\\PC{1,4}",
    ]
}

fn any_rule() -> impl Strategy<Value = CommitRule> {
    prop::collection::btree_set(any_name(), 1..6)
        .prop_flat_map(|names| {
            let len = names.len();
            (
                Just(names.into_iter().collect::<Vec<_>>()).prop_shuffle(),
                1..=len,
                any::<bool>(),
            )
        })
        .prop_map(|(names, count, any)| {
            let method = if any { Method::Any } else { Method::First };
            CommitRule::new(method, count, names.into_iter().map(NodeId).collect())
                .expect("distinct names, 1 <= k <= len")
        })
}

/// The other ways to write `rule`: lower-case keywords, FIRST without its
/// keyword (and without a number when it waits for one), every name
/// quoted, spaces anywhere between tokens.
fn spellings(rule: &CommitRule) -> Vec<String> {
    let quoted: Vec<String> = rule
        .standbys()
        .iter()
        .map(|n| format!("\"{}\"", n.0.replace('"', "\"\"")))
        .collect();
    let kw = rule.method().keyword().to_lowercase();
    let mut out = vec![
        format!("{kw} {} ({})", rule.count(), quoted.join(",")),
        format!(" \t{kw}\n{}( {} ) ", rule.count(), quoted.join(" , ")),
    ];
    if rule.method() == Method::First {
        out.push(format!("{} ({})", rule.count(), quoted.join(", ")));
        if rule.count() == 1 {
            out.push(quoted.join(", "));
        }
    }
    out
}

proptest! {
    /// `Display` writes what `FromStr` reads back as the same rule, and so
    /// does every other spelling of it.
    #[test]
    fn display_parses_back_to_the_same_rule(r in any_rule()) {
        let shown = r.to_string();
        prop_assert_eq!(shown.parse::<CommitRule>(), Ok(r.clone()), "{}", shown);
        for text in spellings(&r) {
            prop_assert_eq!(text.parse::<CommitRule>(), Ok(r.clone()), "{:?}", text);
        }
    }

    /// Any text: a rule that prints back to itself, or an error; never a
    /// panic.
    #[test]
    fn any_text_parses_to_a_rule_or_an_error(
        text in prop_oneof![
            "[(),\" *a-c0-9]{0,16}",
            "(FIRST |ANY |first |any )?[0-9 ]{0,3}[(]?[a-c\", *]{0,8}[)]?[ a-c)]{0,3}",
            "\\PC{0,20}",
        ]
    ) {
        if let Ok(r) = text.parse::<CommitRule>() {
            prop_assert_eq!(r.to_string().parse::<CommitRule>(), Ok(r));
        }
    }
}
