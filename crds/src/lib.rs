//! The `ambit.dev/v1alpha1` custom resources (types, schemas, validation) and the Gateway API
//! subset Ambit reads.
