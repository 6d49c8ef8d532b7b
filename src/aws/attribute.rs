//! An SQS message attribute, as received from a source and as sent to a destination:
//! the one type both sides use, so an attribute passes through with its type intact.

use std::borrow::Cow;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;

/// SQS's bound on message attributes per message.
pub const MAX_ATTRIBUTES: usize = 10;

/// A message attribute: name, SQS data type, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute's name.
    pub name: Cow<'static, str>,
    /// `String`, `Number` or `Binary`, with an optional custom suffix (`Number.float`).
    pub data_type: Cow<'static, str>,
    /// Its value: text for `String` and `Number`, bytes for `Binary`.
    pub value: AttributeValue,
}

/// The value of an [`Attribute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// `String` and `Number` types.
    Text(String),
    /// `Binary` types.
    Bytes(Vec<u8>),
}

impl AttributeValue {
    /// Its size in bytes, as SQS counts it.
    pub fn len(&self) -> usize {
        match self {
            AttributeValue::Text(t) => t.len(),
            AttributeValue::Bytes(b) => b.len(),
        }
    }

    /// Whether the value is empty (SQS refuses an empty value).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Attribute {
    /// A `String` attribute.
    pub fn string(name: &'static str, value: impl Into<String>) -> Self {
        Self {
            name: Cow::Borrowed(name),
            data_type: Cow::Borrowed("String"),
            value: AttributeValue::Text(value.into()),
        }
    }

    /// A `Number` attribute.
    pub fn number(name: &'static str, value: u64) -> Self {
        Self {
            name: Cow::Borrowed(name),
            data_type: Cow::Borrowed("Number"),
            value: AttributeValue::Text(value.to_string()),
        }
    }

    /// Its size as SQS counts it: name, type and value, in bytes.
    pub fn size(&self) -> usize {
        self.name.len() + self.data_type.len() + self.value.len()
    }

    /// The text of a `String` or `Number` attribute.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            AttributeValue::Text(t) => Some(t),
            AttributeValue::Bytes(_) => None,
        }
    }

    /// An attribute received with a message, from its type and whichever value it
    /// has; `None` for one without a value of its type (SQS's list types, which it
    /// never delivers). A Lambda record's attributes come the same way.
    pub fn received(
        name: impl Into<String>,
        data_type: impl Into<String>,
        text: Option<String>,
        bytes: Option<Vec<u8>>,
    ) -> Option<Self> {
        let data_type = data_type.into();
        let value = if data_type.starts_with("Binary") {
            AttributeValue::Bytes(bytes?)
        } else {
            AttributeValue::Text(text?)
        };
        Some(Self {
            name: Cow::Owned(name.into()),
            data_type: Cow::Owned(data_type),
            value,
        })
    }

    /// An attribute received from the SQS API (see [`Attribute::received`]).
    pub fn from_sdk(name: &str, value: &MessageAttributeValue) -> Option<Self> {
        Self::received(
            name,
            value.data_type(),
            value.string_value().map(str::to_string),
            value.binary_value().map(|b| b.as_ref().to_vec()),
        )
    }

    /// The value to send.
    pub fn to_sdk(&self) -> Result<MessageAttributeValue, String> {
        let builder = MessageAttributeValue::builder().data_type(self.data_type.as_ref());
        match &self.value {
            AttributeValue::Text(t) => builder.string_value(t),
            AttributeValue::Bytes(b) => builder.binary_value(Blob::new(b.clone())),
        }
        .build()
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_keep_their_type_through_the_sdk_and_count_every_byte() {
        let binary = MessageAttributeValue::builder()
            .data_type("Binary.gz")
            .binary_value(Blob::new(vec![0, 1, 2]))
            .build()
            .unwrap();
        let a = Attribute::from_sdk("blob", &binary).unwrap();
        assert_eq!(a.value, AttributeValue::Bytes(vec![0, 1, 2]));
        assert_eq!(a.size(), 4 + 9 + 3);
        assert_eq!(a.to_sdk().unwrap(), binary);
        let number = MessageAttributeValue::builder()
            .data_type("Number.float")
            .string_value("1.5")
            .build()
            .unwrap();
        let n = Attribute::from_sdk("ratio", &number).unwrap();
        assert_eq!(n.text(), Some("1.5"));
        assert_eq!(n.to_sdk().unwrap(), number);
        assert_eq!(Attribute::number("project_id", 42).size(), 10 + 6 + 2);
    }
}
