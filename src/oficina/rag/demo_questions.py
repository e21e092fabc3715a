"""The demo retrieval question set: questions a Python user would ask, each with known answers.

How it is built (deterministically, from ``examples/demo/reference.jsonl``):
  1. Each question below was written by hand the way a user would ask it — in their own words,
     not copied from the reference (only 0-2 content words in common with the answer passage is
     typical), so BM25 cannot win by string matching alone.
  2. Each question carries an *evidence* quote: a short exact span of the reference that answers
     it. The relevant documents are derived, not hand-labelled: every document whose text
     contains the evidence (whitespace-normalised) is relevant. The reference repeats itself —
     ``compound`` holds every compound statement, ``specialnames`` every special method — so a
     question often has two or three relevant documents, and all of them count.
  3. A question whose evidence is found in no document is an error (the reference changed):
     the build stops instead of writing a silently shorter set.

    python -m oficina.rag.demo_questions examples/demo     # writes examples/demo/questions.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oficina.workspace import atomic_write_text

# (question, evidence quote from the reference)
QUESTIONS: list[tuple[str, str]] = [
    (
        "Which values count as false when I put them in an if condition?",
        "Here are most of the built-in objects considered false",
    ),
    (
        "What do functions give back when they have no return in them?",
        "This object is returned by functions that don’t explicitly return a value",
    ),
    (
        "Is there a statement that does nothing, for a placeholder body?",
        "is a null operation — when it is executed, nothing happens",
    ),
    (
        "How can an inner function rebind a variable of the function that encloses it?",
        "to refer to previously bound variables in the nearest enclosing scope excluding globals",
    ),
    (
        "How do I change a module-level variable from inside a function?",
        "It would be impossible to assign to a global variable without",
    ),
    (
        "What happens to an assertion check when Python runs with optimization -O?",
        "The current code generator emits no code for an assert statement when optimization is requested",
    ),
    (
        "Can I leave a loop early, and does the loop's else part still run then?",
        "terminates the nearest enclosing loop, skipping the optional",
    ),
    (
        "How do I skip to the next iteration of a loop?",
        "continues with the next cycle of the nearest enclosing loop",
    ),
    (
        "Does removing a name with del also delete it from an enclosing function?",
        "Deletion of a name removes the binding of that name from the local or global namespace",
    ),
    (
        "When does the else block after a for loop get executed?",
        'When the iterator is exhausted, the suite in the "else" clause, if present, is executed',
    ),
    (
        "What does a while loop do with its optional else clause?",
        'the suite of the "else" clause, if present, is executed and the loop terminates',
    ),
    (
        "Does the finally block run even if the try block returns?",
        'When a "return", "break" or "continue" statement is executed in the "try" suite of a "try"…"finally" statement, the "finally" clause is also executed ‘on the way out.’',
    ),
    (
        "How can one except clause handle several exception types at once?",
        "or a tuple containing an item that is the class or a non-virtual base class of the exception object",
    ),
    (
        "What is except* used for and how is it different from a normal except?",
        'clause(s) are used for handling "ExceptionGroup"s',
    ),
    (
        "How can I attach the original exception as the cause when raising a new one?",
        'The "from" clause is used for exception chaining',
    ),
    (
        "Which methods must an object define to be used in a with block?",
        "Enter the runtime context related to this object",
    ),
    (
        "Can one with statement manage several resources at the same time?",
        'With more than one item, the context managers are processed as if multiple "with" statements were nested',
    ),
    (
        "Are default argument values computed each time the function is called?",
        "Default parameter values are evaluated from left to right when the function definition is executed",
    ),
    (
        "What do *args and **kwargs collect in a function signature?",
        'If the form “"*identifier"” is present, it is initialized to a tuple receiving any excess positional parameters',
    ),
    (
        "How do I make parameters keyword-only?",
        'Parameters after “"*"” or “"*identifier"” are keyword-only parameters and may only be passed by keyword arguments',
    ),
    (
        "In what order are multiple decorators applied to a function?",
        "Multiple decorators are applied in nested fashion",
    ),
    (
        "Where do function annotations end up being stored?",
        "The presence of annotations does not change the semantics of a function",
    ),
    (
        "What does the body of a class statement run in, and what happens to its names afterwards?",
        "The class’s suite is then executed in a new execution frame",
    ),
    (
        "How do I write an asynchronous for loop over an async iterator?",
        'The "async for" statement allows convenient iteration over asynchronous iterables',
    ),
    (
        "What does await actually do to the running coroutine?",
        "Suspend the execution of *coroutine* on an *awaitable* object",
    ),
    (
        "What happens when I call a function that contains yield?",
        "are only used when defining a *generator* function",
    ),
    (
        "In a chained assignment like a = b = value, in what order are targets assigned?",
        "An assignment statement evaluates the expression list",
    ),
    ("Does x += 1 evaluate x only once, unlike x = x + 1?", "The target is only evaluated once"),
    (
        "What does 'from module import *' actually import?",
        "The *public names* defined by a module are determined by checking the module’s namespace for a variable named",
    ),
    (
        "How are relative imports with leading dots resolved?",
        "When specifying what module to import you do not have to specify the absolute name of the module",
    ),
    (
        "What does a from __future__ import do?",
        "A *future statement* is a directive to the compiler",
    ),
    (
        "Does the power operator bind tighter than a unary minus on its left?",
        "The power operator binds more tightly than unary operators on its left",
    ),
    (
        "What is the result of integer division with // on negative numbers?",
        "Division of integers yields a float, while floor division of integers results in an integer",
    ),
    (
        "How does the % operator work with negative operands?",
        "The modulo operator always yields a result with the same sign as its second operand (or zero)",
    ),
    (
        "What happens when you shift an integer left by n bits?",
        'A left shift by *n* bits is defined as multiplication with "pow(2,n)"',
    ),
    (
        "What do 'and' and 'or' return — always True or False?",
        'Note that neither "and" nor "or" restrict the value and type they return to "False" and "True"',
    ),
    ("Is 1 < x < 10 valid and how is it evaluated?", "Comparisons can be chained arbitrarily"),
    (
        "Why should I compare with None using 'is' rather than ==?",
        'The operators "is" and "is not" test for an object’s identity',
    ),
    (
        "How does 'in' check membership for a class that does not define __contains__?",
        'For user-defined classes which do not define "__contains__()" but do define "__iter__()"',
    ),
    (
        "Which operators have the lowest precedence in Python?",
        "The following table summarizes the operator precedence in Python",
    ),
    (
        "Can a lambda contain statements?",
        "Note that functions created with lambda expressions cannot contain statements or annotations",
    ),
    (
        "What does a[1:10:2] select from a list?",
        "A slicing selects a range of items in a sequence object",
    ),
    (
        "What happens when I call an object — how are the arguments matched to parameters?",
        "If keyword arguments are present, they are first converted to positional arguments",
    ),
    (
        "If a dict display repeats a key, which value wins?",
        "If a comma-separated sequence of dict items is given, they are evaluated from left to right",
    ),
    (
        "How can I write a very large number more readably with underscores?",
        "Underscores are ignored for determining the numeric value of the literal",
    ),
    (
        "How do I write a complex number literal?",
        "Imaginary literals are described by the following lexical definitions",
    ),
    (
        "What is the difference between r'...' strings and normal strings regarding backslashes?",
        "Both string and bytes literals may optionally be prefixed with a letter",
    ),
    (
        "Which identifiers are reserved keywords that cannot be used as names?",
        "The following identifiers are used as reserved words, or *keywords* of the language",
    ),
    (
        "What is special about names that start with two underscores inside a class?",
        "Private name mangling",
    ),
    (
        "If I add an int and a float, which type is the arithmetic done in?",
        "When a description of an arithmetic operator below uses the phrase “the numeric arguments are converted to a common type”",
    ),
    (
        "How do I customise what repr() shows for my objects?",
        'Called by the "repr()" built-in function to compute the “official” string representation of an object',
    ),
    (
        "If I define __eq__, what happens to hashing of my class?",
        'A class that overrides "__eq__()" and does not define "__hash__()" will have its "__hash__()" implicitly set to "None"',
    ),
    (
        "How can a class intercept access to attributes that don't exist?",
        'Called when the default attribute access fails with an "AttributeError"',
    ),
    ("What are __slots__ good for?", "*__slots__* allow us to explicitly declare data members"),
    (
        "How do descriptors like properties work under the hood?",
        "The following methods only apply when an instance of the class containing the method (a so-called *descriptor* class) appears in an *owner* class",
    ),
    (
        "Which method lets len() work on my own container class?",
        'Called to implement the built-in function "len()"',
    ),
    (
        "How do I support the + operator with my object on the right-hand side?",
        'These methods are called to implement the binary arithmetic operations ("+", "-", "*", "@", "/", "//", "%", "divmod()", "pow()", "**", "<<", ">>", "&", "^", "|") with reflected (swapped) operands',
    ),
    (
        "How can I make instances of my class callable like functions?",
        "Called when the instance is “called” as a function",
    ),
    (
        "Can the id or the class of an object change after it is created?",
        "Every object has an identity, a type and a value",
    ),
    (
        "What does str.format use for the replacement fields and conversion like !r?",
        "Format strings contain “replacement fields” surrounded by curly braces",
    ),
    (
        "How do I pad a number with zeros to a fixed width in a format spec?",
        "When no explicit alignment is given, preceding the *width* field by a zero",
    ),
    (
        "Which string method removes a prefix from a string?",
        'If the string starts with the *prefix* string, return "string[len(prefix):]"',
    ),
    (
        "How does str.split behave when no separator is given?",
        'If *sep* is not specified or is "None", a different splitting algorithm is applied',
    ),
    ("Can I get the keys of a dict in insertion order?", "Dictionaries preserve insertion order"),
    (
        "What does dict.setdefault do?",
        "If *key* is in the dictionary, return its value. If not, insert *key* with a value of *default* and return *default*",
    ),
    (
        "Why does range not store all its numbers in memory?",
        'The advantage of the "range" type over a regular "list" or "tuple" is that a "range" object will always take the same (small) amount of memory',
    ),
    (
        "Does list.sort return the sorted list?",
        "This method modifies the sequence in place for economy of space when sorting a large sequence",
    ),
    (
        "What is a bound method object and what are __self__ and __func__?",
        "If you access a method (a function defined in a class namespace) through an instance, you get a special object: a *bound method*",
    ),
    (
        "How are names resolved in a nested function — what is a scope?",
        "A *scope* defines the visibility of a name within a block",
    ),
    (
        "What is a code block in the execution model?",
        "A Python program is constructed from code blocks",
    ),
    (
        "What happens to names in class bodies when used inside methods or comprehensions?",
        "The scope of names defined in a class block is limited to the class block",
    ),
    (
        "What does the builtins module have to do with name lookup?",
        "The builtins namespace associated with the execution of a code block is actually found by looking up the name",
    ),
    (
        "How do exceptions propagate when they are not handled?",
        "When an exception is not handled at all, the interpreter terminates execution of the program",
    ),
    (
        "What are code objects, and how do they differ from function objects?",
        "They differ from function objects because they don’t contain a reference to their global execution environment",
    ),
    (
        "What attributes like __name__ or __qualname__ do classes and functions have?",
        "The implementation adds a few special read-only attributes to several object types",
    ),
]


def _norm(s: str) -> str:
    return " ".join(s.split())


def build_questions(reference: Path) -> list[dict]:
    docs = [
        json.loads(line)
        for line in reference.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    texts = [(d["id"], _norm(d["text"])) for d in docs]
    rows, missing = [], []
    for i, (question, evidence) in enumerate(QUESTIONS, start=1):
        ev = _norm(evidence)
        relevant = [doc_id for doc_id, text in texts if ev in text]
        if not relevant:
            missing.append(evidence[:60])
            continue
        rows.append(
            {"id": f"q{i:03d}", "question": question, "relevant": relevant, "evidence": evidence}
        )
    if missing:
        raise ValueError(f"{len(missing)} evidence quotes are not in the reference: {missing}")
    return rows


def build(demo_dir: Path) -> list[dict]:
    rows = build_questions(demo_dir / "reference.jsonl")
    atomic_write_text(
        demo_dir / "questions.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
    )
    return rows


if __name__ == "__main__":
    out = build(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/demo"))
    print(f"{len(out)} questions, {sum(len(r['relevant']) for r in out)} relevant documents")
