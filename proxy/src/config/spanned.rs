//! [`Spanned`]: a value of `routes.toml` with the byte range it was written at.
//!
//! `toml::Spanned` does the reading; this wrapper exists so that the raw types can also describe
//! themselves as a JSON Schema (`strangler schema`, see `json_schema.rs`). Where a value was
//! written is not part of its shape, so a spanned value's schema is the value's own. Neither
//! `schemars::JsonSchema` nor `toml::Spanned` belongs to this crate, so the impl needs a type that
//! does; with it, a new field of the raw types appears in the schema without any attribute.

use std::borrow::Cow;
use std::ops::Range;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};

/// A value and the byte range of the file it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spanned<T>(toml::Spanned<T>);

impl<T> Spanned<T> {
    /// A value that was not read from a file points at `span` (a default, or a value built from
    /// others).
    pub fn new(span: Range<usize>, value: T) -> Self {
        Spanned(toml::Spanned::new(span, value))
    }

    /// The byte range of the value in the file.
    pub fn span(&self) -> Range<usize> {
        self.0.span()
    }

    pub fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        toml::Spanned::deserialize(deserializer).map(Spanned)
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_value_and_where_it_was_written() {
        #[derive(Deserialize)]
        struct Doc {
            a: Spanned<i64>,
        }
        let doc: Doc = toml::from_str("a = 42\n").unwrap();
        assert_eq!((*doc.a.get_ref(), doc.a.span()), (42, 4..6));
    }

    #[test]
    fn its_schema_is_the_values() {
        let mut generator = SchemaGenerator::default();
        assert_eq!(Spanned::<Vec<String>>::json_schema(&mut generator), Vec::<String>::json_schema(&mut generator));
    }
}
