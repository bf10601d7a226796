//! Expression evaluation with `meval`: pure, no I/O, never panics its caller.
//!
//! meval 0.2 panics on some token sequences its parser lets through (for example a
//! unary operator it never implemented), so every call runs under `catch_unwind`.
//! The workspace keeps the default `panic = "unwind"` for this reason.

use std::panic::{self, AssertUnwindSafe};

use crate::protocol::Variables;

/// Why an expression has no finite value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// meval refused it: syntax, unknown variable or function, wrong arity.
    #[error("{0}")]
    Invalid(String),
    /// The value is `inf`, `-inf` or `NaN`.
    #[error("{}", describe_non_finite(*.0))]
    NotFinite(f64),
    /// meval panicked on this input; the panic was contained.
    #[error("the evaluator cannot handle this expression")]
    Panicked,
}

fn describe_non_finite(value: f64) -> String {
    if value.is_nan() {
        "result is NaN: undefined, such as 0/0 or sqrt(-1)".to_owned()
    } else {
        format!("result is {value}: division by zero or overflow gives {value}")
    }
}

/// Evaluates `expression` with the built-in functions and constants plus `variables`.
pub fn evaluate(expression: &str, variables: &Variables) -> Result<f64, EvalError> {
    let value = evaluate_raw(expression, variables)?;
    if value.is_finite() { Ok(value) } else { Err(EvalError::NotFinite(value)) }
}

/// Checks at submit time that `expression` can be evaluated at all (SPEC §3): it parses,
/// every variable is bound, every function exists with the right arity. A non-finite
/// value is not a submit-time error: the task runs and ends `failed`.
pub fn check(expression: &str, variables: &Variables) -> Result<(), EvalError> {
    evaluate_raw(expression, variables).map(|_| ())
}

fn evaluate_raw(expression: &str, variables: &Variables) -> Result<f64, EvalError> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let parsed: meval::Expr = expression.parse()?;
        let mut context = meval::Context::new();
        for (name, value) in variables {
            context.var(name.as_str(), *value);
        }
        parsed.eval_with_context(context)
    }));
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(EvalError::Invalid(describe_meval_error(&error))),
        Err(_) => Err(EvalError::Panicked),
    }
}

/// meval's own texts start with "Parse error: " or "Evaluation error: "; ours read as one
/// sentence after the API's "invalid expression" code.
fn describe_meval_error(error: &meval::Error) -> String {
    use meval::{Error, FuncEvalError};
    match error {
        Error::UnknownVariable(name) => format!("unknown variable `{name}`"),
        Error::Function(name, FuncEvalError::UnknownFunction) => {
            format!("unknown function `{name}`")
        }
        Error::Function(name, FuncEvalError::NumberArgs(n)) => {
            format!("function `{name}` takes {n} argument(s)")
        }
        Error::Function(name, FuncEvalError::TooFewArguments) => {
            format!("function `{name}` has too few arguments")
        }
        Error::Function(name, FuncEvalError::TooManyArguments) => {
            format!("function `{name}` has too many arguments")
        }
        Error::ParseError(error) => format!("syntax error: {error}"),
        Error::RPNError(error) => format!("syntax error: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, f64)]) -> Variables {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn evaluates_arithmetic_with_precedence() {
        assert_eq!(evaluate("2+3*4", &Variables::new()), Ok(14.0));
    }

    #[test]
    fn binds_variables_and_constants() {
        let value = evaluate("sqrt(x)*pi", &vars(&[("x", 4.0)])).unwrap();
        assert!((value - 2.0 * std::f64::consts::PI).abs() < 1e-12);
    }

    #[test]
    fn division_by_zero_is_an_error_not_inf() {
        let error = evaluate("1/0", &Variables::new()).unwrap_err();
        assert_eq!(error, EvalError::NotFinite(f64::INFINITY));
        assert!(error.to_string().contains("division by zero"), "{error}");
    }

    #[test]
    fn nan_results_are_errors() {
        for expression in ["0/0", "sqrt(-1)"] {
            let error = evaluate(expression, &Variables::new()).unwrap_err();
            assert!(error.to_string().contains("NaN"), "{expression}: {error}");
        }
    }

    #[test]
    fn check_accepts_what_only_fails_at_run_time() {
        assert_eq!(check("1/0", &Variables::new()), Ok(()));
    }

    #[test]
    fn check_names_the_unknown_variable_and_function() {
        assert_eq!(check("x+1", &Variables::new()), Err(EvalError::Invalid("unknown variable `x`".into())));
        assert_eq!(
            check("nope(1)", &Variables::new()),
            Err(EvalError::Invalid("unknown function `nope`".into()))
        );
    }

    #[test]
    fn check_refuses_wrong_arity_and_syntax_errors() {
        assert!(matches!(check("sin(1, 2)", &Variables::new()), Err(EvalError::Invalid(_))));
        assert!(matches!(check("2+*3", &Variables::new()), Err(EvalError::Invalid(_))));
        assert!(matches!(check("(1", &Variables::new()), Err(EvalError::Invalid(_))));
    }

    #[test]
    fn a_panic_inside_meval_becomes_an_error() {
        // meval 0.2 panics ("Stack is empty") on whitespace-only input; found by
        // enumerating short token sequences. The master refuses blanks before this, but
        // an offer can still carry one.
        assert_eq!(evaluate("   ", &Variables::new()), Err(EvalError::Panicked));
        assert_eq!(check(" ", &Variables::new()), Err(EvalError::Panicked));
    }

    #[test]
    fn hostile_inputs_never_panic_the_caller() {
        let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        let inputs = [
            "", " ", "+", "-", "*", "()", "(,)", "max()", "max(,)", "sin()", "1,2", ",", "1e999999", "--1",
            "!1", "1!", "2^^3", "%", "max(1,)", "(((", ")))", "x(", "\u{0}", "é", &deep,
        ];
        for input in inputs {
            let _ = evaluate(input, &Variables::new());
        }
    }
}
