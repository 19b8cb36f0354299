//! The column types a Table may declare (`COLUMN_TYPE_PATTERN`), parsed, and what changing one
//! into another costs PostgreSQL: a catalog update, a table rewrite, or values that no longer
//! fit. The rules follow PostgreSQL's own: widening `varchar(n)` or `numeric(p,s)` at the same
//! scale needs no rewrite; everything else that changes the stored form rewrites the table.

/// A column type, as `spec.columns[].type` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlType {
    /// `smallint`
    SmallInt,
    /// `integer`
    Integer,
    /// `bigint`
    BigInt,
    /// `real`
    Real,
    /// `double precision`
    Double,
    /// `numeric` (unconstrained) or `numeric(precision, scale)`.
    Numeric(Option<(u32, u32)>),
    /// `boolean`
    Boolean,
    /// `text`
    Text,
    /// `varchar(n)`
    Varchar(u32),
    /// `char(n)`
    Char(u32),
    /// `bytea`
    Bytea,
    /// `date`
    Date,
    /// `time`
    Time,
    /// `timestamp`
    Timestamp,
    /// `timestamptz`
    Timestamptz,
    /// `interval`
    Interval,
    /// `uuid`
    Uuid,
    /// `json`
    Json,
    /// `jsonb`
    Jsonb,
    /// `inet`
    Inet,
}

/// What changing a column from one type to another costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conversion {
    /// The same type.
    Same,
    /// Every value fits and PostgreSQL only updates its catalog: no rewrite, a brief lock.
    InPlace,
    /// Every value fits, but PostgreSQL rewrites the table and its indexes.
    Rewrite,
    /// Some values would not fit, or would lose precision or meaning.
    Narrowing,
    /// PostgreSQL has no conversion that keeps every value.
    Incompatible,
}

impl SqlType {
    /// Parses a type as `COLUMN_TYPE_PATTERN` admits it; `None` for anything else.
    pub fn parse(text: &str) -> Option<SqlType> {
        let simple = match text {
            "smallint" => Some(SqlType::SmallInt),
            "integer" => Some(SqlType::Integer),
            "bigint" => Some(SqlType::BigInt),
            "real" => Some(SqlType::Real),
            "double precision" => Some(SqlType::Double),
            "numeric" => Some(SqlType::Numeric(None)),
            "boolean" => Some(SqlType::Boolean),
            "text" => Some(SqlType::Text),
            "bytea" => Some(SqlType::Bytea),
            "date" => Some(SqlType::Date),
            "time" => Some(SqlType::Time),
            "timestamp" => Some(SqlType::Timestamp),
            "timestamptz" => Some(SqlType::Timestamptz),
            "interval" => Some(SqlType::Interval),
            "uuid" => Some(SqlType::Uuid),
            "json" => Some(SqlType::Json),
            "jsonb" => Some(SqlType::Jsonb),
            "inet" => Some(SqlType::Inet),
            _ => None,
        };
        if simple.is_some() {
            return simple;
        }
        let (name, args) = text.strip_suffix(')')?.split_once('(')?;
        let numbers: Vec<u32> = args
            .split(',')
            .map(|n| n.trim().parse().ok())
            .collect::<Option<_>>()?;
        match (name, numbers.as_slice()) {
            ("varchar", [n]) if *n > 0 => Some(SqlType::Varchar(*n)),
            ("char", [n]) if *n > 0 => Some(SqlType::Char(*n)),
            ("numeric", [p]) if *p > 0 => Some(SqlType::Numeric(Some((*p, 0)))),
            ("numeric", [p, s]) if *p > 0 && s <= p => Some(SqlType::Numeric(Some((*p, *s)))),
            _ => None,
        }
    }

    /// For an integer type: how many decimal digits every value needs at most, and how many
    /// digits any number may have and still fit.
    fn integer_digits(self) -> Option<(u32, u32)> {
        match self {
            SqlType::SmallInt => Some((5, 4)),
            SqlType::Integer => Some((10, 9)),
            SqlType::BigInt => Some((19, 18)),
            _ => None,
        }
    }
}

/// What changing a column of type `from` to type `to` costs.
pub fn conversion(from: SqlType, to: SqlType) -> Conversion {
    use Conversion::*;
    use SqlType::*;
    if from == to {
        return Same;
    }
    let fits = |lossless: bool, cost: Conversion| if lossless { cost } else { Narrowing };
    match (from, to) {
        (a, b) if a.integer_digits().is_some() && b.integer_digits().is_some() => {
            let (needed, _) = a.integer_digits().unwrap_or_default();
            let (held, _) = b.integer_digits().unwrap_or_default();
            fits(held > needed, Rewrite)
        }
        (a, Numeric(limit)) if a.integer_digits().is_some() => {
            let (needed, _) = a.integer_digits().unwrap_or_default();
            fits(limit.is_none_or(|(p, s)| p - s >= needed), Rewrite)
        }
        (Numeric(Some((p, 0))), b) if b.integer_digits().is_some() => {
            let (_, fitting) = b.integer_digits().unwrap_or_default();
            fits(p <= fitting, Rewrite)
        }
        (Numeric(_), b) if b.integer_digits().is_some() => Narrowing,
        (Numeric(Some(_)), Numeric(None)) => InPlace,
        (Numeric(None), Numeric(Some(_))) => Narrowing,
        (Numeric(Some((p, s))), Numeric(Some((p2, s2)))) => {
            if s2 == s && p2 >= p {
                InPlace
            } else {
                fits(s2 >= s && p2 - s2 >= p - s, Rewrite)
            }
        }
        (SmallInt, Real | Double) | (Integer, Double) | (Real, Double) => Rewrite,
        (Integer | BigInt, Real) | (BigInt, Double) | (Double, Real) => Narrowing,
        (Real | Double, Numeric(_)) | (Numeric(_), Real | Double) => Narrowing,
        (Real | Double, b) if b.integer_digits().is_some() => Narrowing,
        (Varchar(n), Varchar(m)) => fits(m >= n, InPlace),
        (Varchar(_), Text) => InPlace,
        (Text, Varchar(_)) => Narrowing,
        (Char(n), Char(m)) => fits(m >= n, Rewrite),
        (Char(n), Varchar(m)) => fits(m >= n, Rewrite),
        (Char(_), Text) => Rewrite,
        (Date, Timestamp | Timestamptz) | (Timestamp, Timestamptz) => Rewrite,
        (Timestamptz, Timestamp) | (Timestamp | Timestamptz, Date) => Narrowing,
        (Json, Jsonb) | (Jsonb, Json) => Rewrite,
        _ => Incompatible,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::table::COLUMN_TYPE_PATTERN;

    #[test]
    fn parses_every_type_the_crd_admits() {
        let all = COLUMN_TYPE_PATTERN
            .trim_start_matches("^(")
            .trim_end_matches(")$");
        for simple in all.split('|').filter(|t| !t.contains('\\')) {
            assert!(SqlType::parse(simple).is_some(), "{simple}");
        }
        assert_eq!(
            SqlType::parse("numeric(12,2)"),
            Some(SqlType::Numeric(Some((12, 2))))
        );
        assert_eq!(
            SqlType::parse("numeric(7)"),
            Some(SqlType::Numeric(Some((7, 0))))
        );
        assert_eq!(SqlType::parse("varchar(40)"), Some(SqlType::Varchar(40)));
        assert_eq!(SqlType::parse("char(3)"), Some(SqlType::Char(3)));
        assert_eq!(SqlType::parse("varchar(0)"), None);
        assert_eq!(SqlType::parse("money"), None);
        assert_eq!(SqlType::parse("numeric(2,5)"), None);
    }

    #[test]
    fn conversions_follow_postgresql() {
        let t = |s: &str| SqlType::parse(s).unwrap();
        let cases = [
            ("varchar(20)", "varchar(40)", Conversion::InPlace),
            ("varchar(40)", "varchar(20)", Conversion::Narrowing),
            ("varchar(40)", "text", Conversion::InPlace),
            ("text", "varchar(40)", Conversion::Narrowing),
            ("integer", "bigint", Conversion::Rewrite),
            ("bigint", "integer", Conversion::Narrowing),
            ("smallint", "integer", Conversion::Rewrite),
            ("numeric(12,2)", "integer", Conversion::Narrowing),
            ("numeric(9,0)", "integer", Conversion::Rewrite),
            ("numeric(10,0)", "integer", Conversion::Narrowing),
            ("integer", "numeric(10,0)", Conversion::Rewrite),
            ("integer", "numeric(10,2)", Conversion::Narrowing),
            ("numeric(10,2)", "numeric(12,2)", Conversion::InPlace),
            ("numeric(10,2)", "numeric(13,3)", Conversion::Rewrite),
            ("numeric(10,2)", "numeric(10,3)", Conversion::Narrowing),
            ("numeric(10,2)", "numeric", Conversion::InPlace),
            ("numeric", "numeric(10,2)", Conversion::Narrowing),
            ("real", "double precision", Conversion::Rewrite),
            ("double precision", "real", Conversion::Narrowing),
            ("bigint", "double precision", Conversion::Narrowing),
            ("char(3)", "char(5)", Conversion::Rewrite),
            ("timestamp", "timestamptz", Conversion::Rewrite),
            ("timestamptz", "timestamp", Conversion::Narrowing),
            ("json", "jsonb", Conversion::Rewrite),
            ("text", "integer", Conversion::Incompatible),
            ("uuid", "text", Conversion::Incompatible),
            ("boolean", "boolean", Conversion::Same),
        ];
        for (from, to, expected) in cases {
            assert_eq!(conversion(t(from), t(to)), expected, "{from} -> {to}");
        }
    }
}
