//! Just enough SQL lexing to name a statement's command and spot transaction control.
//!
//! Skips whitespace, `--` and nested `/* */` comments, string literals (`'..'`, `E'..'`),
//! quoted identifiers and dollar-quoted bodies, so that only real keywords are seen. The
//! server still parses the statement; this never decides whether SQL is valid.

/// A token that matters for finding keywords.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A bare word, upper-cased.
    Word(String),
    Open,
    Close,
    Comma,
    Semicolon,
    /// Anything else: literals, quoted identifiers, operators, `$1`.
    Other,
}

struct Tokens<'a> {
    sql: &'a [u8],
    at: usize,
    /// The deepest `/* */` nesting seen so far.
    deepest_comment: usize,
}

impl Tokens<'_> {
    fn peek(&self, offset: usize) -> Option<u8> {
        self.sql.get(self.at + offset).copied()
    }

    /// Skips to just after the closing `quote`; a doubled quote (or, with `backslash`, a
    /// backslash) escapes it.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) {
        self.at += 1;
        while let Some(c) = self.peek(0) {
            self.at += 1;
            if backslash && c == b'\\' {
                self.at += 1;
            } else if c == quote {
                if self.peek(0) == Some(quote) {
                    self.at += 1;
                } else {
                    return;
                }
            }
        }
    }

    /// Skips a nested `/* */` comment.
    fn skip_block_comment(&mut self) {
        let mut depth = 0usize;
        while self.at < self.sql.len() {
            if self.sql[self.at..].starts_with(b"/*") {
                depth += 1;
                self.deepest_comment = self.deepest_comment.max(depth);
                self.at += 2;
            } else if self.sql[self.at..].starts_with(b"*/") {
                depth -= 1;
                self.at += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.at += 1;
            }
        }
    }

    /// At a `$`: skips a dollar-quoted string if one starts here, else just the `$`.
    fn skip_dollar(&mut self) {
        let rest = &self.sql[self.at + 1..];
        let tag_len = rest.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
        let starts_with_digit = rest.first().is_some_and(u8::is_ascii_digit);
        if starts_with_digit || rest.get(tag_len) != Some(&b'$') {
            self.at += 1;
            return;
        }
        let delimiter = &self.sql[self.at..self.at + tag_len + 2];
        let body = self.at + delimiter.len();
        match self.sql[body..].windows(delimiter.len()).position(|w| w == delimiter) {
            Some(end) => self.at = body + end + delimiter.len(),
            None => self.at = self.sql.len(),
        }
    }
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        loop {
            let c = self.peek(0)?;
            match c {
                c if c.is_ascii_whitespace() => self.at += 1,
                b'-' if self.peek(1) == Some(b'-') => {
                    while self.peek(0).is_some_and(|c| c != b'\n') {
                        self.at += 1;
                    }
                }
                b'/' if self.peek(1) == Some(b'*') => self.skip_block_comment(),
                b'(' | b')' | b',' | b';' => {
                    self.at += 1;
                    return Some(match c {
                        b'(' => Token::Open,
                        b')' => Token::Close,
                        b',' => Token::Comma,
                        _ => Token::Semicolon,
                    });
                }
                b'\'' => {
                    self.skip_quoted(b'\'', false);
                    return Some(Token::Other);
                }
                b'"' => {
                    self.skip_quoted(b'"', false);
                    return Some(Token::Other);
                }
                b'$' => {
                    self.skip_dollar();
                    return Some(Token::Other);
                }
                c if is_word_byte(c) && !c.is_ascii_digit() => {
                    let start = self.at;
                    while self.peek(0).is_some_and(is_word_byte) {
                        self.at += 1;
                    }
                    let word = &self.sql[start..self.at];
                    if matches!(word, b"E" | b"e") && self.peek(0) == Some(b'\'') {
                        self.skip_quoted(b'\'', true);
                        return Some(Token::Other);
                    }
                    return Some(Token::Word(String::from_utf8_lossy(word).to_uppercase()));
                }
                _ => {
                    self.at += 1;
                    return Some(Token::Other);
                }
            }
        }
    }
}

fn tokens(sql: &str) -> Tokens<'_> {
    Tokens { sql: sql.as_bytes(), at: 0, deepest_comment: 0 }
}

/// Comments may nest at most this deep in SQL sent over HTTP. PostgreSQL's lexer does not
/// check for cancellation inside comments, so a statement of thousands of nested comments
/// keeps a backend busy past any deadline, and even past `pg_terminate_backend`.
pub(crate) const MAX_COMMENT_DEPTH: usize = 64;

/// The deepest `/* */` nesting in `sql`, outside strings and quoted identifiers.
pub(crate) fn deepest_comment(sql: &str) -> usize {
    let mut all = tokens(sql);
    all.by_ref().for_each(drop);
    all.deepest_comment
}

/// Keywords that start the main statement after a `WITH` clause.
const MAIN_COMMANDS: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE"];

/// The statement's command: its first keyword upper-cased (`SELECT`, `INSERT`, `CREATE`...);
/// for `WITH ...` the main statement's keyword (or `WITH` if it cannot be found). `None` when
/// the text holds no statement at all (empty, comments, lone semicolons).
pub(crate) fn command(sql: &str) -> Option<String> {
    let mut tokens = tokens(sql).filter(|t| !matches!(t, Token::Open | Token::Semicolon));
    let first = match tokens.next()? {
        Token::Word(word) => word,
        _ => return Some(String::new()),
    };
    if first != "WITH" {
        return Some(first);
    }
    // After WITH: CTE names follow WITH, RECURSIVE or a comma at depth 0; bodies are in
    // parentheses; the main statement is the first command keyword at depth 0.
    let mut depth = 0usize;
    let mut expect_name = true;
    let mut rest = self::tokens(sql);
    rest.by_ref().find(|t| matches!(t, Token::Word(w) if w == "WITH"));
    for token in rest {
        match token {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            Token::Comma => expect_name = true,
            Token::Word(word) if word == "RECURSIVE" => {}
            Token::Word(_) if expect_name => expect_name = false,
            Token::Word(word) if MAIN_COMMANDS.contains(&word.as_str()) => return Some(word),
            _ => {}
        }
    }
    Some(first)
}

/// The transaction control command (`BEGIN`, `COMMIT`...) this statement is, if it is one.
/// `SAVEPOINT`, `RELEASE` and `ROLLBACK TO` work inside a transaction and are not counted.
pub(crate) fn transaction_control(sql: &str) -> Option<String> {
    let mut words = tokens(sql).filter_map(|t| match t {
        Token::Word(word) => Some(word),
        _ => None,
    });
    let first = words.next()?;
    match first.as_str() {
        "BEGIN" | "START" | "COMMIT" | "END" | "ABORT" => Some(first),
        "PREPARE" if words.next().as_deref() == Some("TRANSACTION") => Some("PREPARE TRANSACTION".into()),
        "ROLLBACK" => {
            let next = words.find(|w| w != "WORK" && w != "TRANSACTION");
            (next.as_deref() != Some("TO")).then_some(first)
        }
        _ => None,
    }
}

/// Whether this is a `COPY` to or from the client (`STDIN`/`STDOUT`), which needs the copy
/// sub-protocol: a prepared statement cannot carry it, and the connection would wait for
/// copy data forever.
pub(crate) fn copies_with_client(sql: &str) -> bool {
    let mut words = tokens(sql).filter_map(|t| match t {
        Token::Word(word) => Some(word),
        _ => None,
    });
    words.next().as_deref() == Some("COPY") && words.any(|w| w == "STDIN" || w == "STDOUT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_command() {
        assert_eq!(command("select 1").as_deref(), Some("SELECT"));
        assert_eq!(
            command("  -- hi\n/* a /* nested */ comment */ insert into t values (1)").as_deref(),
            Some("INSERT")
        );
        assert_eq!(command("(SELECT 1) UNION (SELECT 2)").as_deref(), Some("SELECT"));
        assert_eq!(
            command("WITH a AS (SELECT 1), \"update\" AS (DELETE FROM t RETURNING *) UPDATE t SET x = 1")
                .as_deref(),
            Some("UPDATE")
        );
        assert_eq!(command("with recursive r(n) as (values (1)) select * from r").as_deref(), Some("SELECT"));
        assert_eq!(
            command("WITH x AS MATERIALIZED (SELECT ')') INSERT INTO t SELECT 1").as_deref(),
            Some("INSERT")
        );
        assert_eq!(command("WITH broken").as_deref(), Some("WITH"));
        assert_eq!(
            command("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql").as_deref(),
            Some("CREATE")
        );
        assert_eq!(command(""), None);
        assert_eq!(command(" ; -- nothing\n"), None);
    }

    #[test]
    fn spots_transaction_control() {
        assert_eq!(transaction_control("begin").as_deref(), Some("BEGIN"));
        assert_eq!(transaction_control("START TRANSACTION").as_deref(), Some("START"));
        assert_eq!(transaction_control("rollback").as_deref(), Some("ROLLBACK"));
        assert_eq!(transaction_control("ROLLBACK WORK AND CHAIN").as_deref(), Some("ROLLBACK"));
        assert_eq!(transaction_control("ROLLBACK TO SAVEPOINT a"), None);
        assert_eq!(transaction_control("ROLLBACK TRANSACTION TO a"), None);
        assert_eq!(transaction_control("SAVEPOINT a"), None);
        assert_eq!(transaction_control("SELECT 'BEGIN'"), None);
        assert_eq!(transaction_control("prepare transaction 'x'").as_deref(), Some("PREPARE TRANSACTION"));
        assert_eq!(transaction_control("PREPARE q AS SELECT 1"), None);
    }

    #[test]
    fn spots_copy_with_the_client() {
        assert!(copies_with_client("copy t from stdin"));
        assert!(copies_with_client("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)"));
        assert!(!copies_with_client("COPY t TO '/tmp/stdout'"));
        assert!(!copies_with_client("SELECT 'COPY t FROM STDIN'"));
    }

    #[test]
    fn comment_nesting_is_measured_outside_strings() {
        assert_eq!(deepest_comment("select 1"), 0);
        assert_eq!(deepest_comment("select /* a /* b */ c */ 1"), 2);
        assert_eq!(deepest_comment("select '/*/*/*' /* one */"), 1);
        let deep = format!("select 1 {}{}", "/*".repeat(1000), "*/".repeat(1000));
        assert_eq!(deepest_comment(&deep), 1000);
    }
}
