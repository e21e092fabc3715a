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
    # --- added 2026-11-30 for the QA ladder's statistics: statements, execution model, imports ---
    # --- small documents: one each ---
    (
        "Where am I allowed to write an await expression?",
        "Can only be used inside a *coroutine function*.",
    ),
    (
        "When is it useful to write a do-nothing line in a def or class body?",
        "It is useful as a placeholder when a statement is required syntactically, but no code needs to be executed",
    ),
    (
        "If several elif conditions are true at once, which branch actually runs?",
        "It selects exactly one of the suites by evaluating the expressions one by one until one is found to be true",
    ),
    (
        "After I exit a for loop early, what value does the loop variable hold?",
        'If a "for" loop is terminated by "break", the loop control target keeps its current value.',
    ),
    (
        "If I skip ahead to the next iteration from inside a try that has cleanup code, does the cleanup still run?",
        'When "continue" passes control out of a "try" statement with a "finally" clause, that "finally" clause is executed before really starting the next loop cycle.',
    ),
    (
        "How can I make a small unnamed function inline in an expression?",
        "Lambda expressions (sometimes called lambda forms) are used to create anonymous functions.",
    ),
    (
        "If I change a global after defining a function that reads it, which value does the function see when called?",
        "Name resolution of free variables occurs at runtime, not at compile time.",
    ),
    (
        "Why don't I need brackets around yield when it stands alone on its own line?",
        "The yield statement can be used to omit the parentheses that would otherwise be required in the equivalent yield expression statement.",
    ),
    (
        "Can I use nonlocal to create a brand new variable in the outer function?",
        'Names listed in a "nonlocal" statement, unlike those listed in a "global" statement, must refer to pre-existing bindings in an enclosing scope',
    ),
    (
        "When I remove several things in one del statement, in what order does it happen?",
        "Deletion of a target list recursively deletes each target, from left to right.",
    ),
    (
        "Where does a value returned from inside a generator end up?",
        'The returned value (if any) is used as an argument to construct "StopIteration" and becomes the "StopIteration.value" attribute.',
    ),
    (
        "Should I repeat the failing condition in the message of my assertion?",
        "Note that it is unnecessary to include the source code for the expression that failed in the error message; it will be displayed as part of the stack trace.",
    ),
    (
        "Can I use a variable in a function before declaring it global there?",
        'Names listed in a "global" statement must not be used in the same code block textually preceding that "global" statement.',
    ),
    (
        "In a while loop, where does execution go when I skip the rest of an iteration?",
        'A "continue" statement executed in the first suite skips the rest of the suite and goes back to testing the expression.',
    ),
    # --- for, augassign, exceptions, context managers, class ---
    (
        "If I reassign the loop variable inside the body, does it change what the next iteration gets?",
        "This overwrites all previous assignments to those variables including those made in the suite of the for-loop",
    ),
    (
        "Does += on a list build a new list or change the existing one?",
        "when possible, the actual operation is performed *in-place*, meaning that rather than creating a new object and assigning that to the target, the old object is modified instead.",
    ),
    (
        "Can an error handler fix the problem and resume right at the line that failed?",
        "an exception handler can find out what happened and continue execution at an outer level, but it cannot repair the cause of the error and retry the failing operation",
    ),
    (
        "How can my context manager swallow an error raised inside the block?",
        "If an exception is supplied, and the method wishes to suppress the exception (i.e., prevent it from being propagated), it should return a true value.",
    ),
    (
        "If I don't list any parents for my class, what does it derive from?",
        'Classes without an inheritance list inherit, by default, from the base class "object"',
    ),
    # --- with ---
    (
        "Once setup in a with block has succeeded, is the teardown guaranteed to happen?",
        'The "with" statement guarantees that if the "__enter__()" method returns without an error, then "__exit__()" will always be called.',
    ),
    (
        "How can I split a long with line that opens many files across several lines?",
        "You can also write multi-item context managers in multiple lines if the items are surrounded by parentheses.",
    ),
    # --- async ---
    (
        "Is a function declared with async still a coroutine if it never awaits anything?",
        'Functions defined with "async def" syntax are always coroutine functions, even if they do not contain "await" or "async" keywords.',
    ),
    (
        "Can I delegate to a sub-generator with yield from inside an async def?",
        'It is a "SyntaxError" to use a "yield from" expression inside the body of a coroutine function.',
    ),
    # --- raise ---
    (
        "What does a bare raise with nothing after it do inside an except block?",
        'If no expressions are present, "raise" re-raises the exception that is currently being handled, which is also known as the *active exception*.',
    ),
    (
        "How do I hide the 'During handling of the above exception' part of the traceback when raising a new error?",
        'Exception chaining can be explicitly suppressed by specifying "None" in the "from" clause',
    ),
    # --- function ---
    (
        "How do I avoid every call sharing the same list when a parameter defaults to an empty list?",
        'A way around this is to use "None" as the default, and explicitly test for it in the body of the function',
    ),
    (
        "How can I stop callers from passing certain arguments by name?",
        'Parameters before “"/"” are positional-only parameters and may only be passed by positional arguments.',
    ),
    (
        "When does the expression after the @ sign above a def get evaluated?",
        "Decorator expressions are evaluated when the function is defined, in the scope that contains the function definition.",
    ),
    # --- try ---
    (
        "Why can't I use the caught error's name once the handler has finished?",
        'When an exception has been assigned using "as target", it is cleared at the end of the "except" clause.',
    ),
    (
        "If code in the else part of a try fails, will the handlers above catch it?",
        'Exceptions in the "else" clause are not handled by the preceding "except" clauses.',
    ),
    (
        "If both the try body and the finally block return a value, which one does the caller get?",
        'Since the "finally" clause always executes, a "return" statement executed in the "finally" clause will always be the last one executed',
    ),
    (
        "Can I combine ordinary handlers and exception-group handlers on the same try?",
        'It is not possible to mix "except" and "except*" in the same "try".',
    ),
    # --- import ---
    (
        "After import os.path, which name actually becomes available in my namespace?",
        "the name of the top level package that contains the module is bound in the local namespace as a reference to the top level package",
    ),
    (
        "How do I load a module whose name I only know at runtime as a string?",
        '"importlib.import_module()" is provided to support applications that determine dynamically the modules to be loaded.',
    ),
    (
        "Can I do a star import inside a function body?",
        'The wild card form of import — "from module import *" — is only allowed at the module level.',
    ),
    # --- naming / execmodel ---
    (
        "Why do I get an error reading a global in a function that assigns to the same name further down?",
        "If a name binding operation occurs anywhere within a code block, all uses of the name within the block are treated as references to the current block.",
    ),
    (
        "What error do I get if I declare nonlocal a name that no outer function defines?",
        '"SyntaxError" is raised at compile time if the given name does not exist in any enclosing function scope.',
    ),
    (
        "How do I replace a built-in function like print for my whole program?",
        'Users wanting to override values in the builtins namespace should "import" the "builtins" module and modify its attributes appropriately.',
    ),
    # --- assignment ---
    (
        "What does the *rest name get when I unpack a sequence into several variables?",
        "A list of the remaining items in the iterable is then assigned to the starred target (the list can be empty).",
    ),
    (
        "Can I grow a list by assigning to an index past its end?",
        'If the index is out of range, "IndexError" is raised (assignment to a subscripted sequence cannot add new items to a list).',
    ),
    (
        "When I assign obj.x and x only exists on the class, does the class value change?",
        'The left-hand side target "a.x" is always set as an instance attribute, creating it if necessary.',
    ),
    (
        "Does writing x: int inside a function make x a local variable even without a value?",
        "If a name is annotated in a function scope, then this name is local for that scope.",
    ),
    # --- compound: statement structure and match ---
    (
        "Can I write the body of an if right after its colon instead of indenting it below?",
        "A suite can be one or more semicolon-separated simple statements on the same line as the header, following the header’s colon",
    ),
    (
        "How does the language avoid ambiguity about which if an else belongs to?",
        'the ‘dangling "else"’ problem is solved in Python by requiring nested "if" statements to be indented',
    ),
    (
        "Are variables captured in a case clause still available after the match block ends?",
        "**Name bindings made during a successful pattern match outlive the executed block and can be used after the match statement**.",
    ),
    (
        "Can I put a catch-all case before the other cases?",
        "A match statement may have at most one irrefutable case block, and it must be last.",
    ),
    (
        "Does case None compare the subject with == or by identity?",
        'For the singletons "None", "True" and "False", the "is" operator is used.',
    ),
    (
        "Will a string be treated as a list of characters by a case pattern like [a, b]?",
        'Subject values of type "str", "bytes", and "bytearray" do not match sequence patterns.',
    ),
    (
        "How does a class pattern like Point(1, 2) know which attributes the positional values refer to?",
        'If any positional patterns are present, they are converted to keyword patterns using the "__match_args__" attribute on the class',
    ),
    (
        "When I combine alternatives with | in a case, what rules apply to the names they capture?",
        "Only the final subpattern may be irrefutable, and each subpattern must bind the same set of names to avoid ambiguity.",
    ),
    # --- added 2026-11-30 for the QA ladder's statistics: expressions, literals, format strings, the debugger ---
    # formatstrings
    (
        "How can I get a curly bracket to show up in the output of str.format?",
        'If you need to include a brace character in the literal text, it can be escaped by doubling: "{{" and "}}".',
    ),
    (
        "How do I get 1234567 printed as 1,234,567 with format()?",
        """The "','" option signals the use of a comma for a thousands separator.""",
    ),
    (
        "How can I make format show the 0x in front of a hex number?",
        """For integers, when binary, octal, or hexadecimal output is used, this option adds the respective prefix "'0b'", "'0o'", "'0x'", or "'0X'" to the output value.""",
    ),
    (
        "Can I cut a string down to its first few letters with something like {:.5} in a format spec?",
        "For string presentation types the field indicates the maximum field size - in other words, how many characters will be used from the field content.",
    ),
    (
        "How do I stop format from printing -0.00 for tiny negative floats?",
        """The "'z'" option coerces negative zero floating-point values to positive zero after rounding to the format precision.""",
    ),
    (
        "Can the width in a format spec come from a variable passed to format() instead of being hard-coded?",
        "A *format_spec* field can also include nested replacement fields within it.",
    ),
    (
        "Why does '{:.2d}'.format(5) raise an error?",
        "The *precision* is not allowed for integer presentation types.",
    ),
    # debugger
    (
        "Is there a shorter way than importing pdb to pause my program and inspect it?",
        'The built-in "breakpoint()", when called with defaults, can be used instead of "import pdb; pdb.set_trace()".',
    ),
    (
        "In pdb, which command descends into a function call and which one runs over it?",
        'The difference between "next" and "step" is that "step" stops inside a called function, while "next" executes called functions at (nearly) full speed',
    ),
    (
        "If I launch my script with python -m pdb and it crashes, what happens?",
        "When invoked as a module, pdb will automatically enter post-mortem debugging if the program being debugged exits abnormally.",
    ),
    (
        "How do I set a stopping point in pdb that only triggers once and then goes away?",
        "Temporary breakpoint, which is removed automatically when it is first hit.",
    ),
    (
        "Can a pdb breakpoint fire only when a variable reaches a certain value?",
        "If a second argument is present, it is an expression which must evaluate to true before the breakpoint is honored.",
    ),
    (
        "Can I change a variable's value while my program is paused in pdb?",
        "Commands that the debugger doesn’t recognize are assumed to be Python statements and are executed in the context of the program being debugged.",
    ),
    (
        "How can I watch a variable so pdb shows it automatically whenever it changes?",
        "Display the value of *expression* if it changed, each time execution stops in the current frame.",
    ),
    # comparisons
    (
        "Why does float('nan') == float('nan') give False?",
        "A counter-intuitive implication is that not-a-number values are not equal to themselves.",
    ),
    (
        "Is [1, 2] equal to (1, 2), and can I use < between a list and a tuple?",
        'Equality comparison across these types results in inequality, and ordering comparison across these types raises "TypeError".',
    ),
    (
        "What does a < b mean when a and b are sets?",
        "They define order comparison operators to mean subset and superset tests.",
    ),
    (
        "If my class doesn't define __eq__, when are two of its instances considered equal?",
        'The default behavior for equality comparison ("==" and "!=") is based on the identity of the objects.',
    ),
    # strings
    (
        "Why does r'C:\\folder\\' give me a syntax error?",
        "Specifically, *a raw literal cannot end in a single backslash* (since the backslash would escape the following quote character).",
    ),
    (
        "What does Python do with a typo like '\\q' inside a normal string?",
        "Unlike Standard C, all unrecognized escape sequences are left in the string unchanged, i.e., *the backslash is left in the result*.",
    ),
    (
        "Can I make an f-string that produces bytes?",
        """The "'f'" may be combined with "'r'", but not with "'b'" or "'u'", therefore raw formatted strings are possible, but formatted bytes literals are not.""",
    ),
    # calls
    (
        "Why does f(a=1, *(2,)) complain that a got multiple values?",
        'A consequence of this is that although the "*expression" syntax may appear *after* explicit keyword arguments, it is processed *before* the keyword arguments',
    ),
    (
        "Can I pass a dict with integer keys to a function using **?",
        'When "**expression" is used, each key in this mapping must be a string.',
    ),
    (
        "Why does calling obj.method(1) hand two arguments to the underlying function?",
        "The corresponding user-defined function is called, with an argument list that is one longer than the argument list of the call: the instance becomes the first argument.",
    ),
    # operator-summary
    (
        "Does 2 ** 3 ** 2 evaluate as (2**3)**2 or 2**(3**2)?",
        "Operators in the same box group left to right (except for exponentiation and conditional expressions, which group from right to left).",
    ),
    (
        "Why can two strings that look identical on screen, like an accented letter typed two ways, compare unequal?",
        "The comparison operators on strings compare at the level of Unicode code points.",
    ),
    # identifiers
    (
        "Can I still name a variable match now that Python has match statements?",
        'As soft keywords, their use with pattern matching is possible while still preserving compatibility with existing code that uses "match", "case" and "_" as identifier names.',
    ),
    (
        "Are two variable names that differ only in Unicode composition, like a ligature versus separate letters, treated as the same?",
        "All identifiers are converted into the normal form NFKC while parsing; comparison of identifiers is based on NFKC.",
    ),
    # subscriptions
    (
        "If I subclass list and override __getitem__, will x[-1] still work automatically?",
        'Since the support for negative indices and slicing occurs in the object’s "__getitem__()" method, subclasses overriding this method will need to explicitly add that support.',
    ),
    (
        "Does Python have a separate char type for single letters?",
        "A character is not a separate data type but a string of exactly one character.",
    ),
    # binary
    (
        "What is the @ operator for, and can I use it on plain lists?",
        'The "@" (at) operator is intended to be used for matrix multiplication.  No builtin Python types implement this operator.',
    ),
    # dict
    (
        "In {f(x): g(x) for x in xs}, which of f and g runs first for each item?",
        "Starting with 3.8, the key is evaluated before the value, as proposed by **PEP 572**.",
    ),
    # atom-identifiers
    (
        "What error do I get when I use a variable that was never assigned?",
        'When a name is not bound, an attempt to evaluate it raises a "NameError" exception.',
    ),
    # atom-literals
    (
        "Should I rely on two equal constants like 'abc' in my code being the very same object?",
        "All literals correspond to immutable data types, and hence the object’s identity is less important than its value.",
    ),
    # attribute-references
    (
        "Which runs first when I read obj.x: __getattribute__ or __getattr__?",
        'The "__getattribute__()" method is called first and either returns a value or raises "AttributeError" if the attribute is not available.',
    ),
    # bitwise
    (
        "Do &, ^ and | all bind equally strongly?",
        "Each of the three bitwise operations has a different priority level",
    ),
    # booleans
    (
        "Why does not 'hello' give False instead of an empty string?",
        'Because "not" has to create a new value, it returns a boolean value regardless of the type of its argument',
    ),
    # conversions
    (
        "If I multiply a complex number by an int, what does the int become?",
        "If either argument is a complex number, the other is converted to complex",
    ),
    # exprlists
    (
        "Why is (5) just an int and not a one-item tuple?",
        "A single expression without a trailing comma doesn’t create a tuple, but rather yields the value of that expression.",
    ),
    # floating
    (
        "Does a leading zero like in 077e010 make a float literal octal?",
        "Note that the integer and exponent parts are always interpreted using radix 10.",
    ),
    # imaginary
    (
        "What is the real component of 5j?",
        "An imaginary literal yields a complex number with a real part of 0.0.",
    ),
    # in
    (
        "Why does '' in 'hello' return True?",
        "Empty strings are always considered to be a substring of any other string",
    ),
    # integers
    (
        "Why is writing 0123 a syntax error in Python 3?",
        "Note that leading zeros in a non-zero decimal number are not allowed.",
    ),
    # lists
    (
        "In [f(), g(), h()], which function gets called first?",
        "its elements are evaluated from left to right and placed into the list object in that order.",
    ),
    # numbers
    (
        "Is -5 a single literal in Python or something else?",
        'Note that numeric literals do not include a sign; a phrase like "-1" is actually an expression composed of the unary operator ‘"-"’ and the literal "1".',
    ),
    # power
    (
        "What do I get from (-8) ** 0.5?",
        'Raising a negative number to a fractional power results in a "complex" number.',
    ),
    # shifting
    (
        "Is 1 << 2 + 1 computed as (1 << 2) + 1?",
        "The shifting operations have lower priority than the arithmetic operations",
    ),
    # slicings
    (
        "Can I delete or replace a chunk of a list by putting a[2:5] on the left side?",
        'Slicings may be used as expressions or as targets in assignment or "del" statements.',
    ),
    # unary
    (
        "Why does ~5 give -6?",
        'The bitwise inversion of "x" is defined as "-(x+1)".',
    ),
    # id-classes
    (
        "In the Python REPL, how can I reuse the value of the previous expression?",
        'Separately, the interactive interpreter makes the result of the last evaluation available in the variable "_".',
    ),
    # --- added 2026-11-30 for the QA ladder's statistics: the data model and built-in types ---
    (
        "Once I have a compiled chunk of Python, how do I actually run it?",
        'A code object can be executed or evaluated by passing it (instead of a source string) to the "exec()" or "eval()"  built-in functions.',
    ),
    (
        "If I call the class of the three-dots literal, do I get a fresh object?",
        'There is exactly one ellipsis object, named "Ellipsis" (a built-in name).  "type(Ellipsis)()" produces the "Ellipsis" singleton.',
    ),
    (
        "Is it possible to create a second instance of NoneType?",
        'There is exactly one null object, named "None" (a built-in name).  "type(None)()" produces the same singleton.',
    ),
    (
        "Where can I import names such as FunctionType or ModuleType from?",
        'The standard module "types" defines names for all standard built-in types.',
    ),
    (
        "What does invoking an instance like obj(a, b) turn into behind the scenes?",
        'if this method is defined, "x(arg1, arg2, ...)" roughly translates to "type(x).__call__(x, arg1, ...)".',
    ),
    (
        "Will an instance of a plain user class pass an if check, and what could make it fail?",
        'By default, an object is considered true unless its class defines either a "__bool__()" method that returns "False" or a "__len__()" method that returns zero, when called with the object.',
    ),
    (
        "Why does len have a different type from a function I write with def, though both are callable?",
        "Both support the same operation (to call the function), but the implementation is different, hence the different object types.",
    ),
    (
        "Why does tagging c.method.label = 'x' fail even though plain functions accept extra fields?",
        'However, since method attributes are actually stored on the underlying function object ("meth.__func__"), setting method attributes on bound methods is disallowed.',
    ),
    (
        "Can I swap out a module's whole namespace by assigning a fresh dict to it?",
        'Modifying this dictionary will actually change the module’s symbol table, but direct assignment to the "__dict__" attribute is not possible',
    ),
    (
        "How do I find which classes directly inherit from a given class?",
        "Each class keeps a list of weak references to its immediate subclasses.  This method returns a list of all those references still alive.",
    ),
    (
        "Can I rely on an open handle being released as soon as nothing refers to it anymore?",
        "Do not depend on immediate finalization of objects when they become unreachable (so you should always close files explicitly).",
    ),
    (
        "What is the main reason to write a __new__ method rather than just __init__?",
        '"__new__()" is intended mainly to allow subclasses of immutable types (like int, str, or tuple) to customize instance creation.',
    ),
    (
        "What happens if my __init__ hands back something other than nothing?",
        'no non-"None" value may be returned by "__init__()"; doing so will cause a "TypeError" to be raised at runtime.',
    ),
    (
        "Does the del statement immediately run my object's finalizer?",
        '"del x" doesn’t directly call "x.__del__()" — the former decrements the reference count for "x" by one, and the latter is only called when "x"’s reference count reaches zero.',
    ),
    (
        "If I only write __repr__ for my class, what will print() show?",
        'If a class defines "__repr__()" but not "__str__()", then "__repr__()" is also used when an “informal” string representation of instances of that class is required.',
    ),
    (
        "If I only define __eq__, does != work automatically?",
        'For "__ne__()", by default it delegates to "__eq__()" and inverts the result unless it is "NotImplemented".',
    ),
    (
        "My __getattribute__ override keeps calling itself until the stack blows up; how should it fetch attributes?",
        "In order to avoid infinite recursion in this method, its implementation should always call the base class method with the same name to access any attributes it needs",
    ),
    (
        "Is there a hook for generating names on demand when code does mymodule.something that doesn't exist?",
        'The "__getattr__" function at the module level should accept one argument which is the name of an attribute and return the computed value or raise an "AttributeError".',
    ),
    (
        "Why can't I shadow a property on one instance the way I can replace a method?",
        'The "property()" function is implemented as a data descriptor. Accordingly, instances cannot override the behavior of a property.',
    ),
    (
        "Can I write x = 0 in the class body to initialise a name also listed in __slots__?",
        "As a result, class attributes cannot be used to set default values for instance variables defined by *__slots__*; otherwise, the class attribute would overwrite the descriptor assignment.",
    ),
    (
        "If my class has __add__ but no __iadd__, what does x += y do?",
        "If a specific method is not defined, the augmented assignment falls back to the normal methods.",
    ),
    (
        "If I call pow(a, b, m) and a can't handle it, does Python try b's reflected method?",
        'Note that ternary "pow()" will not try calling "__rpow__()" (the coercion rules would become too complicated).',
    ),
    (
        "My class has only __len__ and __getitem__; can I still iterate it backwards with the built-in?",
        'If the "__reversed__()" method is not provided, the "reversed()" built-in will fall back to using the sequence protocol ("__len__()" and "__getitem__()").',
    ),
    (
        "What exception should __getitem__ raise for an out-of-range position so that looping over my object stops properly?",
        '"for" loops expect that an "IndexError" will be raised for illegal indexes to allow proper detection of the end of the sequence.',
    ),
    (
        "How can a base class run some code every time someone subclasses it, without a metaclass?",
        'Whenever a class inherits from another class, "__init_subclass__()" is called on the parent class.',
    ),
    (
        "How can a descriptor learn the attribute name it was assigned to in the class body?",
        'When a class is created, "type.__new__()" scans the class variables and makes callbacks to those with a "__set_name__()" hook.',
    ),
    (
        "Why do I get an error when inheriting from two bases whose metaclasses are unrelated?",
        'If none of the candidate metaclasses meets that criterion, then the class definition will fail with "TypeError".',
    ),
    (
        "When I combine two dicts with |, whose value is kept for a duplicated entry?",
        "The values of *other* take priority when *d* and *other* share keys.",
    ),
    (
        "Why does len(obj) still fail after I assign obj.__len__ = lambda: 5?",
        "For custom classes, implicit invocations of special methods are only guaranteed to work correctly if defined on an object’s type, not in the object’s instance dictionary.",
    ),
    (
        "How do I declare that my class deliberately does not support iteration, even though it has __getitem__?",
        'Setting a special method to "None" indicates that the corresponding operation is not available.',
    ),
    (
        "Where do I put the hook that customises isinstance() checks against my class?",
        "Note that these methods are looked up on the type (metaclass) of a class.  They cannot be defined as class methods in the actual class.",
    ),
    (
        "Is it OK to test NotImplemented in an if statement?",
        'Evaluating "NotImplemented" in a boolean context is deprecated. While it currently evaluates as true, it will emit a "DeprecationWarning".',
    ),
    (
        "Can I do arithmetic with True and False as if they were numbers?",
        "The Boolean type is a subtype of the integer type, and Boolean values behave like the values 0 and 1, respectively, in almost all contexts",
    ),
    (
        "If I delete an entry from a dict and put it back, what position does it take when iterating?",
        "Replacing an existing key does not change the order, however removing a key and re-inserting it will add it to the end instead of keeping its old place.",
    ),
    (
        "Does Python build a fresh wrapper on every lookup of obj.method?",
        "Note that the transformation from function object to instance method object happens each time the attribute is retrieved from the instance.",
    ),
    (
        "What kind of set can itself be nested in a set or used to index a dict?",
        "As a frozenset is immutable and *hashable*, it can be used again as an element of another set, or as a dictionary key.",
    ),
    (
        "Why does my_module.__file__ raise AttributeError for some modules?",
        'The "__file__" attribute may be missing for certain types of modules, such as C modules that are statically linked into the interpreter.',
    ),
    (
        "What's the best way to compare two strings ignoring case, including the German ß?",
        "Casefolding is similar to lowercasing but more aggressive because it is intended to remove all case distinctions in a string.",
    ),
    (
        "Should I use find() just to check whether some text occurs in a string?",
        'The "find()" method should be used only if you need to know the position of *sub*.',
    ),
    (
        "Why does lstrip with a word argument eat more characters than the word itself?",
        "The *chars* argument is not a prefix; rather, all combinations of its values are stripped",
    ),
    (
        "Why does title() turn they're into They'Re?",
        "The definition works in many contexts but it means that apostrophes in contractions and possessives form word boundaries, which may not be the desired result",
    ),
    (
        "Does breaking text into lines give me an extra empty item when it ends with a newline?",
        "this method returns an empty list for the empty string, and a terminal line break does not result in an extra line",
    ),
    (
        "Why does appending to one inner list change all of them when I build a grid with [[]] * 3?",
        "Note that items in the sequence *s* are not copied; they are referenced multiple times.",
    ),
    (
        "Why is building a long string with += in a loop slow?",
        "This means that building up a sequence by repeated concatenation will have a quadratic runtime cost in the total sequence length.",
    ),
    (
        "Why is (5) just a number while 5, is a tuple?",
        "Note that it is actually the comma which makes a tuple, not the parentheses.",
    ),
    (
        "Does == on ranges look at their start/stop/step arguments or at the numbers they produce?",
        "That is, two range objects are considered equal if they represent the same sequence of values.",
    ),
    (
        "Which element does list.pop() take out if I pass no argument?",
        'The optional argument *i* defaults to "-1", so that by default the last item is removed and returned.',
    ),
    (
        "Can I assign a shorter list to a stepped slice like a[::2]?",
        "*t* must have the same length as the slice it is replacing.",
    ),
    (
        "Why do all the values change together when I create a dict with dict.fromkeys(keys, [])?",
        "All of the values refer to just a single instance, so it generally doesn’t make sense for *value* to be a mutable object such as an empty list.",
    ),
    (
        "Which pair comes out when I pop an arbitrary item from a dict?",
        'Remove and return a "(key, value)" pair from the dictionary. Pairs are returned in LIFO (last-in, first-out) order.',
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
