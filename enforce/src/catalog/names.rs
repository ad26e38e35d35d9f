//! Field names compared the way lenient servers compare them, so that a
//! spelling variant of a rule's field is that field: JSON member names
//! case-insensitively under simple case folding (Go's `encoding/json`
//! matches `ſ` to `s` and the Kelvin sign to `k`; ASP.NET's ordinal
//! ignore-case matches `ı` to `i`), form and query names as PHP, Rails and
//! ASP.NET rewrite them (`.` and space become `_`, `name[]` and `name[0]`
//! are items of the list `name`, an unclosed `[` becomes `_`, a NUL ends
//! the name), as Rack 2 and Node's qs read brackets around one (`[name]`
//! is `name`), and as Spring's binder reads its default prefix (`!name`).

/// The only character of `it`, if it yields exactly one.
fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
    let c = it.next()?;
    it.next().is_none().then_some(c)
}

/// One character's fold: its simple upper case mapped to its simple lower
/// case (a mapping to several characters is not simple and is skipped).
/// Every character a lenient server matches with another folds to the
/// same one (checked against Go's `unicode.SimpleFold` orbits by the
/// adversarial suite); a few more also do, which only ever makes the
/// catalog see more spellings of a field, never fewer.
pub(super) fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let upper = single(c.to_uppercase()).unwrap_or(c);
    single(upper.to_lowercase()).unwrap_or(upper)
}

/// `s` with every character folded.
pub(super) fn fold(s: &str) -> String {
    s.chars().map(fold_char).collect()
}

/// Whether `name` folds to `folded` (already folded).
pub(super) fn eq_folded(name: &str, folded: &str) -> bool {
    name.chars().map(fold_char).eq(folded.chars())
}

/// The key a rule's field and a sent name are matched on: the folded name
/// (or a form name's `field`) with every `_` dropped. Pydantic binds a
/// field under its alias and its own name when a model has
/// `alias_generator=to_camel, populate_by_name=True` (a common FastAPI
/// setup: `amountCents` and `amount_cents` are one field, and the alias
/// wins when both are sent), so each is a spelling of the other.
pub(super) fn binding_key(folded: &str) -> String {
    folded.chars().filter(|&c| c != '_').collect()
}

/// Whether `name`, folded, has the binding key `key` ([`binding_key`]),
/// without building either string: JSON lookups ask it of every member.
pub(super) fn binds_to(name: &str, key: &str) -> bool {
    name.chars()
        .map(fold_char)
        .filter(|&c| c != '_')
        .eq(key.chars())
}

/// How a form or query name addresses its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// `name`: one value (repeated: several).
    Plain,
    /// `name[]` or `name[3]`: an item of the list `name`.
    Item,
    /// `name[key]`: a member of a structure `name`.
    Member,
}

/// A form or query field name as servers read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FormName {
    /// The field it addresses, rewritten and folded: what two spellings
    /// of one field have in common.
    pub field: String,
    pub shape: Shape,
    /// The name as written (decoded) up to its first `[` with the shape:
    /// two different spellings of one field are a duplicate, the same
    /// spelling repeated is a list.
    pub spelling: String,
    /// For `X.F` and `X[F]`, the property `F` (folded): ASP.NET Core binds
    /// it to the property `F` of a model parameter named `X` (its
    /// jQuery-style value providers read `X[F]` as `X.F`), and then reads
    /// no bare `F`. `None` for other names.
    pub property: Option<String>,
}

/// Reads a decoded form or query name. PHP cuts it at a NUL (it is a C
/// string there), drops leading spaces, turns `.` and space in the name
/// before its first `[` into `_`, reads `[…]` as an index, and turns a `[`
/// with no `]` into `_`; Rack 2 (Rails before Rack 3) drops `[` and `]`
/// before the name and ends it at a `]` too, and Node's qs (Express) reads
/// `[name]` as `name`; ASP.NET compares names without case. Where servers
/// differ, the name is read as the field some server binds it to (PHP
/// ignores `[amount]`, Rack and qs read `amount`). Spring's data binder
/// reads `!name` as `name` where no `name` is sent. A name the rule writes
/// is read the same way.
pub(super) fn form_name(raw: &str) -> FormName {
    let cut = raw.split('\0').next().unwrap_or("");
    // Spring's data binder reads `!name` as `name` when no `name` is sent
    // (its field default prefix).
    let name = cut
        .strip_prefix('!')
        .unwrap_or(cut)
        .trim_start_matches([' ', '[', ']']);
    // Where `name` starts in `raw` (a suffix of `cut`, a prefix of `raw`):
    // spellings keep what was written.
    let lead = cut.len() - name.len();
    let mut property = None;
    let (base, shape, tail) = match name.find(['[', ']']) {
        None => {
            property = name
                .split_once('.')
                .filter(|(model, f)| !model.is_empty() && !f.is_empty() && !f.contains('.'))
                .map(|(_, f)| fold(f));
            (name, Shape::Plain, None)
        }
        // Rack 2: the name ends at `]`, the `]`s after it are dropped,
        // and what follows (if anything) indexes it.
        Some(end) if name.as_bytes()[end] == b']' => {
            let rest = name[end..].trim_start_matches(']');
            let shape = if rest.is_empty() {
                Shape::Plain
            } else {
                rest.strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .map_or(Shape::Member, |(index, _)| index_shape(index))
            };
            (&name[..end], shape, None)
        }
        Some(open) => match name[open + 1..].find(']') {
            Some(close) => {
                let index = &name[open + 1..open + 1 + close];
                let shape = index_shape(index);
                let whole = open + 2 + close == name.len();
                if shape == Shape::Member && whole && open > 0 && !name[..open].contains('.') {
                    property = Some(fold(index));
                }
                (&name[..open], shape, None)
            }
            // PHP: an unclosed `[` is a `_` and the rest stays as written.
            None => (&name[..open], Shape::Plain, Some(&name[open + 1..])),
        },
    };
    let mut field: String = base
        .chars()
        .map(|c| {
            if c == '.' || c == ' ' {
                '_'
            } else {
                fold_char(c)
            }
        })
        .collect();
    if let Some(tail) = tail {
        field.push('_');
        field.push_str(&fold(tail));
    }
    let written = &raw[..lead + base.len()];
    let spelling = match shape {
        Shape::Plain => raw.to_owned(),
        Shape::Item => format!("{written}[]"),
        Shape::Member => format!("{written}[…]"),
    };
    FormName {
        field,
        shape,
        spelling,
        property,
    }
}

/// The shape an index gives its name: digits or nothing make an item.
fn index_shape(index: &str) -> Shape {
    if index.bytes().all(|b| b.is_ascii_digit()) {
        Shape::Item
    } else {
        Shape::Member
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_match_lenient_servers() {
        for (a, b) in [
            ("total", "TOTAL"),
            ("total", "ToTaL"),
            ("cc", "Cc"),
            ("subject", "ſubject"),
            ("kind", "\u{212A}ind"),
            ("city", "cıty"),
            ("straße", "STRAẞE"),
            ("σ", "ς"),
        ] {
            assert_eq!(fold(a), fold(b), "{a} {b}");
            assert!(eq_folded(b, &fold(a)), "{a} {b}");
        }
        for (a, b) in [("total", "totals"), ("to", "tö"), ("i", "İ"), ("ss", "ß")] {
            assert_ne!(fold(a), fold(b), "{a} {b}");
        }
    }

    #[test]
    fn form_names_as_php_and_aspnet_read_them() {
        let f = |s: &str| form_name(s);
        for (raw, field, shape) in [
            ("amount", "amount", Shape::Plain),
            ("Amount", "amount", Shape::Plain),
            ("card.number", "card_number", Shape::Plain),
            ("card number", "card_number", Shape::Plain),
            ("  card_number", "card_number", Shape::Plain),
            ("card[number", "card_number", Shape::Plain),
            ("to[]", "to", Shape::Item),
            ("to[0]", "to", Shape::Item),
            ("TO[12]", "to", Shape::Item),
            ("to[x]", "to", Shape::Member),
            ("to[]x", "to", Shape::Item),
            ("a.b[c.d]", "a_b", Shape::Member),
            // PHP cuts at a NUL; Rack 2 and qs drop brackets before the
            // name, Rack 2 ends it at `]`.
            ("amount\0junk", "amount", Shape::Plain),
            ("amount\0[x]", "amount", Shape::Plain),
            ("[amount]", "amount", Shape::Plain),
            ("]]amount", "amount", Shape::Plain),
            ("[amount][]", "amount", Shape::Item),
            ("[amount][x]", "amount", Shape::Member),
            ("amount]", "amount", Shape::Plain),
            ("amount]]x", "amount", Shape::Member),
            ("amount][0]", "amount", Shape::Item),
            (" [to]", "to", Shape::Plain),
            ("!amount", "amount", Shape::Plain),
            ("!Amount[]", "amount", Shape::Item),
        ] {
            let n = f(raw);
            assert_eq!((n.field.as_str(), n.shape), (field, shape), "{raw}");
        }
        assert_eq!(f("to[0]").spelling, f("to[1]").spelling);
        for (raw, property) in [
            ("model.amount", Some("amount")),
            ("Model[Amount]", Some("amount")),
            ("amount", None),
            ("a.b.c", None),
            ("a[b][c]", None),
            ("a.b[c]", None),
            ("to[0]", None),
            (".amount", None),
            ("[amount]", None),
        ] {
            assert_eq!(f(raw).property.as_deref(), property, "{raw}");
        }
        for other in ["[to]", "to]", "to\0x", "[to][]", " to", "!to"] {
            assert_ne!(f("to").spelling, f(other).spelling, "{other}");
        }
        assert_ne!(f("to[]").spelling, f("[to][]").spelling);
        assert_ne!(f("to").spelling, f("to[]").spelling);
        assert_ne!(f("to").spelling, f("To").spelling);
    }
}
