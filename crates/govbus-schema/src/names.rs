//! Named types of a schema, so that `Schema::Ref` can be followed.

use std::collections::HashMap;

use apache_avro::schema::Name;
use apache_avro::Schema;

/// Every named type (record, enum, fixed) defined in a schema.
#[derive(Debug, Clone, Default)]
pub struct Names(HashMap<Name, Schema>);

impl Names {
    /// Collects the named types of `schema`.
    pub fn of(schema: &Schema) -> Self {
        let mut n = Names::default();
        n.walk(schema);
        n
    }

    fn walk(&mut self, s: &Schema) {
        match s {
            Schema::Record(r) => {
                self.0.insert(r.name.clone(), s.clone());
                for f in &r.fields {
                    self.walk(&f.schema);
                }
            }
            Schema::Enum(e) => {
                self.0.insert(e.name.clone(), s.clone());
            }
            Schema::Fixed(f) => {
                self.0.insert(f.name.clone(), s.clone());
            }
            Schema::Array(a) => self.walk(&a.items),
            Schema::Map(m) => self.walk(&m.types),
            Schema::Union(u) => {
                for v in u.variants() {
                    self.walk(v);
                }
            }
            _ => {}
        }
    }

    /// The named type `name`, if the schema defines it.
    pub fn get(&self, name: &Name) -> Option<&Schema> {
        self.0.get(name)
    }

    /// `s` itself, or the type it refers to.
    pub fn resolve<'a>(&'a self, s: &'a Schema) -> &'a Schema {
        match s {
            Schema::Ref { name } => self.0.get(name).unwrap_or(s),
            _ => s,
        }
    }
}
