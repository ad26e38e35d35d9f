//! Form fields: `application/x-www-form-urlencoded` bodies and query
//! strings parsed strictly (a bad percent-escape or non-UTF-8 text is
//! refused, where parsers would drop, keep or replace it), and one field
//! read from the pairs under every name a server would bind to it.

use super::error::ClassifyError;
use super::names::{binding_key, form_name, FormName, Shape};

/// One name=value pair of a form, query or multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FormPair {
    pub name: FormName,
    pub value: String,
    /// A multipart part with a file name: an upload, not a field value.
    pub file: bool,
}

fn bad(what: &str, problem: &str) -> ClassifyError {
    ClassifyError::BadField {
        field: what.to_owned(),
        problem: problem.to_owned(),
    }
}

/// Decodes one name or value: `+` is a space, `%XX` a byte; anything else
/// after a `%` and text that is not UTF-8 are refused.
fn decode(raw: &[u8], what: &str) -> Result<String, ClassifyError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let byte = raw
                    .get(i + 1)
                    .and_then(|&h| hex(h))
                    .zip(raw.get(i + 2).and_then(|&l| hex(l)))
                    .ok_or_else(|| bad(what, "invalid percent-escape"))?;
                out.push(u8::try_from(byte.0 * 16 + byte.1).expect("two hex digits make a byte"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad(what, "not UTF-8"))
}

/// The pairs of an urlencoded text, split at `&` (and at `;` too when
/// `semicolons`, as some servers still do). `what` names the source in
/// errors.
pub(super) fn parse_urlencoded(
    text: &[u8],
    semicolons: bool,
    what: &str,
) -> Result<Vec<FormPair>, ClassifyError> {
    text.split(|&b| b == b'&' || (semicolons && b == b';'))
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            Ok(FormPair {
                name: form_name(&decode(name, what)?),
                value: decode(value, what)?,
                file: false,
            })
        })
        .collect()
}

/// The values of the field `rule_name` (read as a form name itself) in
/// `pairs`, under any name a server binds to it (an ASP.NET model prefix:
/// `model.amount` and `model[amount]` are `amount`; a pydantic alias:
/// `amountCents` is `amount_cents`, `names.rs`). Two spellings of it, a repeat where one value is wanted
/// (`one`), a list item or structure member where one value is wanted, a
/// structure where a list is wanted, and an uploaded file are refused.
/// `describe` names the field in errors.
pub(super) fn read_field(
    pairs: &[FormPair],
    rule_name: &str,
    one: bool,
    describe: &str,
) -> Result<Vec<String>, ClassifyError> {
    let target = binding_key(&form_name(rule_name).field);
    let is_field = |p: &FormPair| binding_key(&p.name.field) == target;
    let hits: Vec<&FormPair> = pairs
        .iter()
        .filter(|p| {
            is_field(p)
                || p.name
                    .property
                    .as_deref()
                    .is_some_and(|q| binding_key(q) == target)
        })
        .collect();
    // Through a model prefix (`model.amount`) a name is one plain value.
    let shape = |p: &FormPair| match is_field(p) {
        true => p.name.shape,
        false => Shape::Plain,
    };
    if hits.iter().any(|p| p.file) {
        return Err(bad(describe, "sent as an uploaded file"));
    }
    let mut spellings: Vec<&str> = hits.iter().map(|p| p.name.spelling.as_str()).collect();
    spellings.sort_unstable();
    spellings.dedup();
    if spellings.len() > 1 {
        return Err(ClassifyError::FieldSpellings {
            field: describe.to_owned(),
            spellings: spellings.iter().map(|s| format!("{s:?}")).collect(),
        });
    }
    match hits.first().map(|p| shape(p)) {
        Some(Shape::Member) => return Err(bad(describe, "written as a structure (name[key])")),
        Some(Shape::Item) if one => {
            return Err(bad(
                describe,
                "written as a list (name[]) where one value is expected",
            ))
        }
        _ => {}
    }
    if one && hits.len() > 1 {
        return Err(ClassifyError::DuplicateField(describe.to_owned()));
    }
    Ok(hits.into_iter().map(|p| p.value.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, name: &str, one: bool) -> Result<Vec<String>, ClassifyError> {
        let pairs = parse_urlencoded(text.as_bytes(), false, "form")?;
        read_field(&pairs, name, one, "form f")
    }

    #[test]
    fn spellings_of_a_field_are_that_field() {
        for body in [
            "amount=5",
            "Amount=5",
            "AMOUNT=5",
            "%61mount=5",
            "x=1&amount=5&y=2",
        ] {
            assert_eq!(
                read(body, "amount", true),
                Ok(vec!["5".to_owned()]),
                "{body}"
            );
        }
        for body in [
            "card.number=4",
            "card+number=4",
            "card%20number=4",
            "card[number=4",
        ] {
            assert_eq!(
                read(body, "card_number", true),
                Ok(vec!["4".to_owned()]),
                "{body}"
            );
        }
        assert_eq!(
            read("to[]=a&to[]=b", "to", false),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            read("to[0]=a&to[1]=b", "to", false),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            read("to=a&to=b", "to", false),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(read("x=1", "amount", true), Ok(vec![]));
        assert_eq!(
            read("model.amount=5", "amount", true),
            Ok(vec!["5".to_owned()])
        );
        assert_eq!(
            read("model[amount]=5&x.to=a", "amount", true),
            Ok(vec!["5".to_owned()])
        );
        assert!(matches!(
            read("amount=1&model.amount=900", "amount", true),
            Err(ClassifyError::FieldSpellings { .. })
        ));
    }

    #[test]
    fn two_readings_are_refused() {
        assert_eq!(
            read("amount=1&amount=900", "amount", true),
            Err(ClassifyError::DuplicateField("form f".into()))
        );
        assert_eq!(
            read("amountCents=5", "amount_cents", true),
            Ok(vec!["5".to_owned()])
        );
        for body in [
            "amount=1&Amount=900",
            "amount=1&amount[]=900",
            "to=a&TO=b",
            "amount_cents=1&amountCents=900",
            "amount_cents=1&model.amountCents=900",
        ] {
            let field = if body.starts_with("to") {
                "to"
            } else if body.starts_with("amount_cents") {
                "amount_cents"
            } else {
                "amount"
            };
            assert!(
                matches!(
                    read(body, field, false),
                    Err(ClassifyError::FieldSpellings { .. })
                ),
                "{body}"
            );
        }
        for (body, one) in [
            ("amount[]=5", true),
            ("amount[x]=5", true),
            ("to[x]=a", false),
        ] {
            let field = if body.starts_with("to") {
                "to"
            } else {
                "amount"
            };
            assert!(
                matches!(read(body, field, one), Err(ClassifyError::BadField { .. })),
                "{body}"
            );
        }
        for body in ["amount=%zz", "amount=%f", "amount=%ff", "am%ffount=1"] {
            assert!(
                matches!(
                    read(body, "amount", true),
                    Err(ClassifyError::BadField { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn semicolons_split_only_when_asked() {
        let text = b"amount=1;amount=900";
        let amp = parse_urlencoded(text, false, "form").expect("parses");
        let both = parse_urlencoded(text, true, "form").expect("parses");
        assert_eq!(
            read_field(&amp, "amount", true, "f"),
            Ok(vec!["1;amount=900".to_owned()])
        );
        assert_eq!(
            read_field(&both, "amount", true, "f"),
            Err(ClassifyError::DuplicateField("f".into()))
        );
    }
}
