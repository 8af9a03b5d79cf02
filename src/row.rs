//! Typed rows: [`FromRow`] maps a row to a Rust value, and [`Response::one`](crate::Response::one),
//! [`opt`](crate::Response::opt), [`scalar`](crate::Response::scalar) and [`all`](crate::Response::all)
//! use it, so that reading a result never panics.
//!
//! A column of the wrong type or a missing column is an [`ErrorKind::Decode`]; zero or several rows where
//! one was expected is an [`ErrorKind::RowCount`]. Both are [`Permanent`](rampart_layers::Classification):
//! the statement ran and running it again would give the same answer, so neither is retried, counted
//! by the breaker, or reported as outcome unknown.

use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use rampart_layers::Classification;

use crate::error::{Error, ErrorKind};

/// Why a row could not be mapped: whatever [`Row::try_get`] or a custom check returned. `?` converts
/// a `tokio_postgres::Error` (and any other error) into it.
pub type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// A value made from one row of a result: tuples of up to 8 columns by position, or your own types.
///
/// Tuples of up to 8 columns map by position. A struct maps by implementing [`FromRow`] with
/// [`Row::try_get`], which returns an error rather than panicking as `Row::get` does:
///
/// ```
/// use rampart::postgres::Row;
///
/// struct User {
///     id: i64,
///     email: String,
/// }
///
/// impl rampart::FromRow for User {
///     fn from_row(row: &Row) -> Result<Self, rampart::DecodeError> {
///         Ok(User { id: row.try_get("id")?, email: row.try_get("email")? })
///     }
/// }
/// ```
///
/// A column of another type or a missing column is an [`ErrorKind::Decode`] error, zero or several
/// rows where one was expected an [`ErrorKind::RowCount`]; both are permanent (never retried, never
/// counted by the breaker).
///
/// There is no blanket impl for every `T: TryFrom<&Row>`: it would overlap the tuple impls (coherence
/// allows tokio-postgres to add such a conversion for tuples). A type that already has one maps with
/// an impl calling it: `fn from_row(row: &Row) -> Result<Self, DecodeError> { Ok(Self::try_from(row)?) }`.
///
/// No derive is offered. Of the crates that derive row mapping for tokio-postgres, `tokio-pg-mapper`
/// (0.2.0) has had no release since 2021; `postgres-from-row` (0.5.2) derives its own `FromRow` trait,
/// which a blanket impl here could not accept beside the tuple impls. Either is a proc-macro
/// (syn and quote) compiled by every user for four lines saved per struct.
pub trait FromRow: Sized {
    /// Maps `row`; an error becomes an [`ErrorKind::Decode`].
    fn from_row(row: &Row) -> Result<Self, DecodeError>;
}

macro_rules! tuple_from_row {
    ($($name:ident $index:tt),+) => {
        impl<$($name),+> FromRow for ($($name,)+)
        where
            $($name: for<'a> FromSql<'a>,)+
        {
            fn from_row(row: &Row) -> Result<Self, DecodeError> {
                Ok(($(row.try_get::<_, $name>($index)?,)+))
            }
        }
    };
}

tuple_from_row!(A 0);
tuple_from_row!(A 0, B 1);
tuple_from_row!(A 0, B 1, C 2);
tuple_from_row!(A 0, B 1, C 2, D 3);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_from_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// Maps one row, converting a failure into an [`ErrorKind::Decode`] error once, here.
pub(crate) fn decode<T: FromRow>(row: &Row) -> Result<T, Error> {
    T::from_row(row).map_err(|err| {
        Error::new(
            ErrorKind::Decode,
            Classification::Permanent,
            format!(
                "cannot read the row as {}: {err}",
                std::any::type_name::<T>()
            ),
        )
        .with_source(err)
    })
}

/// The single column of a single row.
pub(crate) fn scalar<T: for<'a> FromSql<'a>>(row: &Row) -> Result<T, Error> {
    let columns = row.len();
    if columns != 1 {
        return Err(Error::new(
            ErrorKind::Decode,
            Classification::Permanent,
            format!("expected one column, the row has {columns}"),
        ));
    }
    decode::<(T,)>(row).map(|(value,)| value)
}

/// The error for a result that does not have the number of rows the caller expects.
pub(crate) fn row_count(expected: &str, got: usize) -> Error {
    Error::new(
        ErrorKind::RowCount,
        Classification::Permanent,
        format!("expected {expected}, the statement returned {got} rows"),
    )
}
