//! kestra facade.
