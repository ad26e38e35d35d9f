//! `openclaw usage report`: the ledger summed by tenant, user, session, model
//! or day over a period, as a table, CSV (for finance) or JSON. Days are UTC.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::format_usd;
use super::ledger::UsageLedger;

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKey {
    /// The UTC day of the call (`date` column).
    Day,
    Tenant,
    Model,
    User,
    Session,
}

impl GroupKey {
    fn column(self) -> &'static str {
        match self {
            GroupKey::Day => "day",
            GroupKey::Tenant => "tenant",
            GroupKey::Model => "model",
            GroupKey::User => "user",
            GroupKey::Session => "session",
        }
    }

    /// The name in headers, CSV and JSON.
    fn header(self) -> &'static str {
        match self {
            GroupKey::Day => "date",
            other => other.column(),
        }
    }
}

/// An inclusive range of UTC days, `YYYY-MM-DD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Period {
    pub from: String,
    pub to: String,
}

/// Reads `--period`: `today`, `yesterday`, `current-month`, `last-month`,
/// `YYYY-MM`, `YYYY-MM-DD` or `FROM..TO` (two days, inclusive), against
/// `today` (`YYYY-MM-DD`, UTC).
pub fn parse_period(text: &str, today: &str) -> Result<Period> {
    let (year, month) = year_month(&today[..7]).context("today's date")?;
    let day_range = |from: &str, to: &str| Period {
        from: from.to_owned(),
        to: to.to_owned(),
    };
    // Day strings compare as dates, so a month is its 01 to its 31.
    let month_range =
        |y: i32, m: u32| day_range(&format!("{y:04}-{m:02}-01"), &format!("{y:04}-{m:02}-31"));
    Ok(match text {
        "today" => day_range(today, today),
        "yesterday" => {
            let d = days_from_civil(today).context("today's date")? - 1;
            let y = civil_from_days(d);
            day_range(&y, &y)
        }
        "current-month" => month_range(year, month),
        "last-month" => {
            if month == 1 {
                month_range(year - 1, 12)
            } else {
                month_range(year, month - 1)
            }
        }
        _ => {
            if let Some((from, to)) = text.split_once("..") {
                for d in [from, to] {
                    if days_from_civil(d).is_none() {
                        bail!("{d:?} is not a date YYYY-MM-DD (in --period {text:?})");
                    }
                }
                if from > to {
                    bail!("--period {text:?} ends before it starts");
                }
                day_range(from, to)
            } else if let Some((y, m)) = year_month(text) {
                month_range(y, m)
            } else if days_from_civil(text).is_some() {
                day_range(text, text)
            } else {
                bail!(
                    "--period {text:?}: expected today, yesterday, current-month, last-month, YYYY-MM, YYYY-MM-DD or FROM..TO"
                );
            }
        }
    })
}

/// `YYYY-MM` → (year, month).
fn year_month(text: &str) -> Option<(i32, u32)> {
    let (y, m) = text.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m) = (y.parse().ok()?, m.parse().ok()?);
    (1..=12).contains(&m).then_some((y, m))
}

/// Days since 1970-01-01 of a valid `YYYY-MM-DD`.
fn days_from_civil(text: &str) -> Option<i64> {
    if text.len() != 10 || text.as_bytes()[7] != b'-' {
        return None;
    }
    let (y, m) = year_month(&text[..7])?;
    let d: u32 = text[8..]
        .parse()
        .ok()
        .filter(|_| text[8..].bytes().all(|b| b.is_ascii_digit()))?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d == 0 || d > month_days[m as usize - 1] {
        return None;
    }
    let time = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs / 86_400).ok()
}

/// `YYYY-MM-DD` of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> String {
    let secs = u64::try_from(days.max(0)).unwrap_or(0) * 86_400;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// Today's date, UTC.
pub fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_owned()
}

/// One group's sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sums {
    pub calls: u64,
    /// Every input token: uncached, cache reads and cache writes.
    pub tokens_in: u64,
    /// Of `tokens_in`, read from the provider's cache.
    pub tokens_cached_in: u64,
    /// Of `tokens_in`, written to the provider's cache (5-minute and 1-hour).
    pub tokens_cache_write: u64,
    /// Output tokens, reasoning included.
    pub tokens_out: u64,
    /// Of `tokens_out`, reasoning.
    pub tokens_reasoning: u64,
    pub cost_micro_usd: u64,
    /// Calls charged their reservation because the provider reported no usage.
    pub estimated_calls: u64,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.calls += other.calls;
        self.tokens_in += other.tokens_in;
        self.tokens_cached_in += other.tokens_cached_in;
        self.tokens_cache_write += other.tokens_cache_write;
        self.tokens_out += other.tokens_out;
        self.tokens_reasoning += other.tokens_reasoning;
        self.cost_micro_usd += other.cost_micro_usd;
        self.estimated_calls += other.estimated_calls;
    }
}

/// A report: the groups in key order, and their total.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub period: Period,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub by: Vec<GroupKey>,
    pub rows: Vec<ReportRow>,
    pub total: Sums,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    /// The group's key values, in `by` order.
    pub keys: Vec<String>,
    #[serde(flatten)]
    pub sums: Sums,
}

/// Sums the ledger's rows in `period` (and of `tenant`, if given) by `by`.
/// One query text for both stores: `$N` parameters, quoted column names
/// (`user` is a keyword in PostgreSQL) and sums cast to 64-bit integers
/// (PostgreSQL's `SUM` of a BIGINT is a NUMERIC).
pub fn query(
    ledger: &dyn UsageLedger,
    period: &Period,
    tenant: Option<&str>,
    by: &[GroupKey],
) -> Result<UsageReport> {
    let mut by = by.to_vec();
    by.sort();
    by.dedup();
    let keys: Vec<String> = by.iter().map(|k| format!("\"{}\"", k.column())).collect();
    let key_list = if keys.is_empty() {
        String::new()
    } else {
        format!("{}, ", keys.join(", "))
    };
    let group = if keys.is_empty() {
        String::new()
    } else {
        format!("GROUP BY {0} ORDER BY {0}", keys.join(", "))
    };
    let sum = |expr: &str| format!("CAST(SUM({expr}) AS BIGINT)");
    let sql = format!(
        "SELECT {key_list} COUNT(*), {}, {}, {}, {}, {}, {}, {}
         FROM usage WHERE day BETWEEN $1 AND $2 AND (CAST($3 AS TEXT) IS NULL OR tenant = $3) {group}",
        sum("tokens_input + tokens_cached_input + tokens_cache_write_5m + tokens_cache_write_1h"),
        sum("tokens_cached_input"),
        sum("tokens_cache_write_5m + tokens_cache_write_1h"),
        sum("tokens_output"),
        sum("tokens_reasoning"),
        sum("cost_micro_usd"),
        sum("estimated"),
    );
    let n = keys.len();
    let found = ledger
        .grouped(&sql, n, &period.from, &period.to, tenant)
        .context("querying the ledger")?;
    let mut rows = Vec::new();
    for (keys, sums) in found {
        if sums[0] == 0 {
            continue; // an aggregate over no rows at all
        }
        let num = |i: usize| u64::try_from(sums[i]).unwrap_or(0);
        let sums = Sums {
            calls: num(0),
            tokens_in: num(1),
            tokens_cached_in: num(2),
            tokens_cache_write: num(3),
            tokens_out: num(4),
            tokens_reasoning: num(5),
            cost_micro_usd: num(6),
            estimated_calls: num(7),
        };
        rows.push(ReportRow { keys, sums });
    }
    let mut total = Sums::default();
    for row in &rows {
        total.add(&row.sums);
    }
    Ok(UsageReport {
        period: period.clone(),
        tenant: tenant.map(str::to_owned),
        by,
        rows,
        total,
    })
}

const NUMBER_HEADERS: [&str; 8] = [
    "calls",
    "tokens_in",
    "tokens_cached_in",
    "tokens_cache_write",
    "tokens_out",
    "tokens_reasoning",
    "cost_usd",
    "estimated_calls",
];

fn numbers(s: &Sums) -> [String; 8] {
    [
        s.calls.to_string(),
        s.tokens_in.to_string(),
        s.tokens_cached_in.to_string(),
        s.tokens_cache_write.to_string(),
        s.tokens_out.to_string(),
        s.tokens_reasoning.to_string(),
        format_usd(s.cost_micro_usd),
        s.estimated_calls.to_string(),
    ]
}

/// CSV (RFC 4180): a header line, then one line per group. The key
/// columns come first (`date,tenant,model` when grouped by them).
pub fn to_csv(report: &UsageReport) -> String {
    let mut out = String::new();
    let header: Vec<&str> = report
        .by
        .iter()
        .map(|k| k.header())
        .chain(NUMBER_HEADERS)
        .collect();
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    for row in &report.rows {
        let cells: Vec<String> = row
            .keys
            .iter()
            .map(|k| csv_cell(k))
            .chain(numbers(&row.sums))
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_cell(text: &str) -> String {
    // A leading = + - @ would be a formula to a spreadsheet: quote and
    // prefix it so a tenant or model name cannot run one.
    let formula = text.starts_with(['=', '+', '-', '@']);
    if formula || text.contains([',', '"', '\n', '\r']) {
        let body = if formula {
            format!("'{text}")
        } else {
            text.to_owned()
        };
        format!("\"{}\"", body.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// An aligned text table with a total line.
pub fn to_table(report: &UsageReport) -> String {
    let header: Vec<String> = report
        .by
        .iter()
        .map(|k| k.header().to_owned())
        .chain(NUMBER_HEADERS.iter().map(|h| h.to_string()))
        .collect();
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in &report.rows {
        lines.push(
            row.keys
                .iter()
                .map(|k| k.chars().filter(|c| !c.is_control()).collect())
                .chain(numbers(&row.sums))
                .collect(),
        );
    }
    let mut total: Vec<String> = report.by.iter().map(|_| String::new()).collect();
    if let Some(first) = total.first_mut() {
        *first = "total".into();
    }
    total.extend(numbers(&report.total));
    lines.push(total);
    let cols = lines[0].len();
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let keys = report.by.len();
    let mut out = format!(
        "LLM usage {} .. {} (UTC){}\n",
        report.period.from,
        report.period.to,
        report
            .tenant
            .as_deref()
            .map(|t| format!(", tenant {t}"))
            .unwrap_or_default()
    );
    for (i, line) in lines.iter().enumerate() {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if c < keys {
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(text, "{}{cell}  ", " ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
        if i == 0 || i + 2 == lines.len() {
            out.push_str(&"-".repeat(width.iter().sum::<usize>() + 2 * cols.saturating_sub(1)));
            out.push('\n');
        }
    }
    if report.rows.is_empty() {
        out.push_str("(no metered LLM calls in this period)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_day_ranges() {
        let p = |t: &str| parse_period(t, "2026-03-01").map(|p| (p.from, p.to));
        let r = |a: &str, b: &str| Ok::<_, ()>((a.to_owned(), b.to_owned()));
        assert_eq!(p("today").ok(), r("2026-03-01", "2026-03-01").ok());
        assert_eq!(p("yesterday").ok(), r("2026-02-28", "2026-02-28").ok());
        assert_eq!(p("current-month").ok(), r("2026-03-01", "2026-03-31").ok());
        assert_eq!(p("last-month").ok(), r("2026-02-01", "2026-02-31").ok());
        assert_eq!(
            parse_period("last-month", "2026-01-15")
                .map(|p| (p.from, p.to))
                .ok(),
            r("2025-12-01", "2025-12-31").ok()
        );
        assert_eq!(
            parse_period("yesterday", "2024-03-01").map(|p| p.from).ok(),
            Some("2024-02-29".to_owned())
        );
        assert_eq!(p("2025-11").ok(), r("2025-11-01", "2025-11-31").ok());
        assert_eq!(p("2025-11-05").ok(), r("2025-11-05", "2025-11-05").ok());
        assert_eq!(
            p("2025-11-05..2026-01-02").ok(),
            r("2025-11-05", "2026-01-02").ok()
        );
        for bad in [
            "2025-13",
            "2025-02-30",
            "2026-01-02..2025-11-05",
            "last-week",
            "2025-1",
            "x..2025-01-01",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("acme"), "acme");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
        assert_eq!(csv_cell("-1"), "\"'-1\"");
    }
}
