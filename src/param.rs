//! What [`Query::bind`](crate::Query::bind) accepts: owned values as they are, borrowed ones copied once
//! into owned parameters.

use tokio_postgres::types::ToSql;

/// A value [`Query::bind`](crate::Query::bind) accepts: it is turned into an owned parameter, so the query does not borrow
/// from the caller.
///
/// Owned: `bool`, `i8`, `i16`, `i32`, `i64`, `u32`, `f32`, `f64`, `String`, `Box<str>`, `Vec<u8>`,
/// `SystemTime`, `IpAddr`, `Option` and `Vec` of any of them. Borrowed, copied once: `&str`, `&&str`,
/// `&String`, `Cow<str>`, `&[u8]`, `&Vec<u8>`, `Cow<[u8]>`, a reference to any owned scalar above, and
/// a slice of any of them (an array parameter). Other `ToSql` types bind with [`Query::bind_value`](crate::Query::bind_value),
/// or implement this trait for your own type with `type Owned = Self`.
pub trait IntoParam {
    /// The owned value the query keeps.
    type Owned: ToSql + Send + Sync + 'static;

    /// Makes the owned value (a move for owned values, one copy for borrowed ones).
    fn into_owned(self) -> Self::Owned;
}

macro_rules! owned_params {
    ($($ty:ty),+) => {$(
        impl IntoParam for $ty {
            type Owned = $ty;
            fn into_owned(self) -> $ty {
                self
            }
        }
    )+};
}

macro_rules! copied_params {
    ($($ty:ty),+) => {$(
        impl IntoParam for &$ty {
            type Owned = $ty;
            fn into_owned(self) -> $ty {
                self.clone()
            }
        }
    )+};
}

owned_params!(
    bool,
    i8,
    i16,
    i32,
    i64,
    u32,
    f32,
    f64,
    String,
    Box<str>,
    Vec<u8>,
    std::time::SystemTime,
    std::net::IpAddr
);
copied_params!(
    bool,
    i8,
    i16,
    i32,
    i64,
    u32,
    f32,
    f64,
    String,
    Box<str>,
    Vec<u8>,
    std::time::SystemTime,
    std::net::IpAddr
);

impl IntoParam for &str {
    type Owned = String;
    fn into_owned(self) -> String {
        self.to_owned()
    }
}

impl IntoParam for &&str {
    type Owned = String;
    fn into_owned(self) -> String {
        (*self).to_owned()
    }
}

impl IntoParam for std::borrow::Cow<'_, str> {
    type Owned = String;
    fn into_owned(self) -> String {
        self.into_owned()
    }
}

impl IntoParam for &[u8] {
    type Owned = Vec<u8>;
    fn into_owned(self) -> Vec<u8> {
        self.to_vec()
    }
}

impl IntoParam for std::borrow::Cow<'_, [u8]> {
    type Owned = Vec<u8>;
    fn into_owned(self) -> Vec<u8> {
        self.into_owned()
    }
}

impl<T: IntoParam> IntoParam for Option<T> {
    type Owned = Option<T::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.map(IntoParam::into_owned)
    }
}

impl<T: IntoParam> IntoParam for Vec<T> {
    type Owned = Vec<T::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.into_iter().map(IntoParam::into_owned).collect()
    }
}

impl<'a, T> IntoParam for &'a [T]
where
    &'a T: IntoParam,
{
    type Owned = Vec<<&'a T as IntoParam>::Owned>;
    fn into_owned(self) -> Self::Owned {
        self.iter().map(IntoParam::into_owned).collect()
    }
}
