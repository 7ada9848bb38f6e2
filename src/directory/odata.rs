//! A small OData `$filter` language over JSON rows: what the offline filters are written in,
//! evaluated by the gateway on the rows it replicates (Dataverse's change tracking does not
//! combine with `$filter`, so the replica filters locally). The Dataverse simulator answers
//! `$filter` queries with it too.
//!
//! Supported: `col eq|ne|gt|ge|lt|le literal`, `and`, `or`, `not`, parentheses,
//! `contains|startswith|endswith(col, 'text')`. Literals: `'text'` (`''` escapes a quote),
//! numbers, `true`, `false`, `null`, and bare GUIDs or timestamps (compared as text). Text
//! compares case-insensitively, as Dataverse's default collation does.

use serde_json::{Map, Value};

/// Longest filter accepted, and deepest nesting.
const MAX_LENGTH: usize = 4096;
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot read the filter at byte {at}: {problem}")]
pub struct FilterError {
    pub at: usize,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFunction {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare(String, Comparison, Value),
    Function(TextFunction, String, String),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => {
                tokens.push((i, Token::Open));
                i += 1;
            }
            b')' => {
                tokens.push((i, Token::Close));
                i += 1;
            }
            b',' => {
                tokens.push((i, Token::Comma));
                i += 1;
            }
            b'\'' => {
                let start = i;
                let mut out = String::new();
                i += 1;
                loop {
                    match text[i..].find('\'') {
                        None => {
                            return Err(FilterError {
                                at: start,
                                problem: "a quoted text is not closed".into(),
                            });
                        }
                        Some(end) => {
                            out.push_str(&text[i..i + end]);
                            i += end + 1;
                            if bytes.get(i) == Some(&b'\'') {
                                out.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                tokens.push((start, Token::Text(out)));
            }
            _ => {
                let start = i;
                while i < bytes.len() && !b" \t\r\n(),'".contains(&bytes[i]) {
                    i += 1;
                }
                tokens.push((start, Token::Word(text[start..i].to_owned())));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn at(&self) -> usize {
        self.tokens.get(self.next).map(|t| t.0).unwrap_or(self.end)
    }

    fn fail<T>(&self, problem: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            at: self.at(),
            problem: problem.into(),
        })
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.next), Some((_, Token::Word(w))) if w.eq_ignore_ascii_case(word))
    }

    fn take(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.next).map(|t| t.1.clone());
        self.next += 1;
        t
    }

    fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.and(depth)?;
        while self.peek_word("or") {
            self.next += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.unary(depth)?;
        while self.peek_word("and") {
            self.next += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary(depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return self.fail(format!("nested deeper than {MAX_DEPTH}"));
        }
        if self.peek_word("not") {
            self.next += 1;
            return Ok(Filter::Not(Box::new(self.unary(depth + 1)?)));
        }
        if matches!(self.tokens.get(self.next), Some((_, Token::Open))) {
            self.next += 1;
            let inner = self.or(depth + 1)?;
            if self.take() != Some(Token::Close) {
                return self.fail("a `(` is not closed");
            }
            return Ok(inner);
        }
        let Some(Token::Word(column)) = self.take() else {
            self.next = self.next.saturating_sub(1);
            return self.fail("expected a column name");
        };
        if let Some(function) = match column.to_ascii_lowercase().as_str() {
            "contains" => Some(TextFunction::Contains),
            "startswith" => Some(TextFunction::StartsWith),
            "endswith" => Some(TextFunction::EndsWith),
            _ => None,
        } {
            let (
                Some(Token::Open),
                Some(Token::Word(col)),
                Some(Token::Comma),
                Some(Token::Text(t)),
                Some(Token::Close),
            ) = (
                self.take(),
                self.take(),
                self.take(),
                self.take(),
                self.take(),
            )
            else {
                return self.fail(format!("write {column}(column, 'text')"));
            };
            return Ok(Filter::Function(function, col, t.to_lowercase()));
        }
        if !valid_column(&column) {
            return self.fail(format!("`{column}` is not a column name"));
        }
        let op = match self.take() {
            Some(Token::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "eq" => Comparison::Eq,
                "ne" => Comparison::Ne,
                "gt" => Comparison::Gt,
                "ge" => Comparison::Ge,
                "lt" => Comparison::Lt,
                "le" => Comparison::Le,
                _ => {
                    self.next -= 1;
                    return self.fail(format!("`{w}` is not one of eq, ne, gt, ge, lt, le"));
                }
            },
            _ => {
                self.next = self.next.saturating_sub(1);
                return self.fail("expected eq, ne, gt, ge, lt or le");
            }
        };
        let value = match self.take() {
            Some(Token::Text(t)) => Value::String(t),
            Some(Token::Word(w)) => match w.as_str() {
                "null" => Value::Null,
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => match serde_json::from_str::<serde_json::Number>(&w) {
                    Ok(n) if !w.contains('-') || w.starts_with('-') => Value::Number(n),
                    _ => Value::String(w),
                },
            },
            _ => {
                self.next = self.next.saturating_sub(1);
                return self.fail("expected a value");
            }
        };
        Ok(Filter::Compare(column, op, value))
    }
}

fn valid_column(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_LENGTH {
            return Err(FilterError {
                at: MAX_LENGTH,
                problem: format!("longer than {MAX_LENGTH} bytes"),
            });
        }
        let mut parser = Parser {
            tokens: tokenize(text)?,
            next: 0,
            end: text.len(),
        };
        let filter = parser.or(0)?;
        if parser.next < parser.tokens.len() {
            return parser.fail("unexpected text after the filter");
        }
        Ok(filter)
    }

    /// The columns the filter reads.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Filter::Compare(c, ..) | Filter::Function(_, c, _) => vec![c.as_str()],
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut all = a.columns();
                all.extend(b.columns());
                all
            }
            Filter::Not(a) => a.columns(),
        }
    }

    /// Whether `row` passes; a missing column is `null`.
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        match self {
            Filter::And(a, b) => a.matches(row) && b.matches(row),
            Filter::Or(a, b) => a.matches(row) || b.matches(row),
            Filter::Not(a) => !a.matches(row),
            Filter::Function(f, col, text) => {
                let Some(Value::String(value)) = row.get(col) else {
                    return false;
                };
                let value = value.to_lowercase();
                match f {
                    TextFunction::Contains => value.contains(text.as_str()),
                    TextFunction::StartsWith => value.starts_with(text.as_str()),
                    TextFunction::EndsWith => value.ends_with(text.as_str()),
                }
            }
            Filter::Compare(col, op, expected) => {
                let actual = row.get(col).unwrap_or(&Value::Null);
                let ordering = compare(actual, expected);
                match op {
                    Comparison::Eq => ordering == Some(std::cmp::Ordering::Equal),
                    Comparison::Ne => ordering != Some(std::cmp::Ordering::Equal),
                    Comparison::Gt => ordering == Some(std::cmp::Ordering::Greater),
                    Comparison::Ge => ordering.is_some_and(|o| o.is_ge()),
                    Comparison::Lt => ordering == Some(std::cmp::Ordering::Less),
                    Comparison::Le => ordering.is_some_and(|o| o.is_le()),
                }
            }
        }
    }
}

/// Orders two JSON values the way a filter compares them; `None` when they do not compare
/// (a `null` equals only `null`).
fn compare(actual: &Value, expected: &Value) -> Option<std::cmp::Ordering> {
    match (actual, expected) {
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        (Value::String(a), Value::String(e)) => Some(a.to_lowercase().cmp(&e.to_lowercase())),
        (Value::Number(a), Value::Number(e)) => a.as_f64()?.partial_cmp(&e.as_f64()?),
        (Value::Bool(a), Value::Bool(e)) => Some(a.cmp(e)),
        // A number column written as text, or the reverse.
        (Value::String(a), Value::Number(e)) => a.parse::<f64>().ok()?.partial_cmp(&e.as_f64()?),
        (Value::Number(a), Value::String(e)) => a.as_f64()?.partial_cmp(&e.parse::<f64>().ok()?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn comparisons_logic_and_functions_evaluate_like_odata() {
        let r = row(json!({"statecode": 0, "emailaddress1": "Pat@Fabrikam.com",
            "createdon": "2026-05-01T00:00:00Z", "_ownerid_value": "6f1c0000-0000-0000-0000-000000000001",
            "name": "O'Neil"}));
        for (filter, expected) in [
            ("statecode eq 0", true),
            ("statecode ne 0", false),
            ("emailaddress1 eq 'pat@fabrikam.com'", true),
            ("createdon ge 2026-01-01T00:00:00Z", true),
            ("createdon lt '2026-01-01'", false),
            (
                "statecode eq 0 and (createdon gt 2027-01-01 or endswith(emailaddress1,'@fabrikam.com'))",
                true,
            ),
            ("not statecode eq 0", false),
            (
                "_ownerid_value eq 6F1C0000-0000-0000-0000-000000000001",
                true,
            ),
            ("parentcustomerid eq null", true),
            ("parentcustomerid ne null", false),
            ("name eq 'O''Neil'", true),
            ("contains(emailaddress1, 'FABRIKAM')", true),
            ("startswith(emailaddress1,'kim')", false),
            ("statecode eq 0 and statecode eq 1 or statecode eq 0", true),
        ] {
            let parsed = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
            assert_eq!(parsed.matches(&r), expected, "{filter}");
        }
    }

    proptest::proptest! {
        /// Any text either parses or is an error inside the text; evaluating never panics.
        #[test]
        fn any_text_parses_or_fails_cleanly(text in "[ a-z0-9_()',.:\\-éß]{0,80}") {
            match Filter::parse(&text) {
                Ok(f) => {
                    let _ = f.matches(&Map::new());
                }
                Err(e) => proptest::prop_assert!(e.at <= text.len()),
            }
        }
    }

    #[test]
    fn bad_filters_say_where() {
        for (filter, at) in [
            ("statecode eq", 12),
            ("statecode is 0", 10),
            ("(statecode eq 0", 15),
            ("name eq 'open", 8),
            ("statecode eq 0 statecode", 15),
            ("contains(name)", 14),
        ] {
            let error = Filter::parse(filter).expect_err(filter);
            assert_eq!(error.at, at, "{filter}: {error}");
        }
        let deep = format!("{}statecode eq 0{}", "(".repeat(40), ")".repeat(40));
        assert!(Filter::parse(&deep).is_err());
        assert!(Filter::parse(&"a".repeat(5000)).is_err());
    }
}
