"""Safe expressions, the text form of torch's ``lr_lambda``.

``LambdaLR(lr_lambda="0.95 ** epoch")`` cannot ship a Python function between the
controller and the workers, so an ``lr_lambda`` is a short formula in ``epoch``, checked
against an allowlist and compiled once into a tree of small closures::

    >>> f = compile_expression("0.5 if epoch < 40 else 0.5 ** 2 if epoch < 70 else 0.5 ** 3")
    >>> f(10), f(50), f(80)
    (0.5, 0.25, 0.125)

User text is never given to ``eval`` or ``exec``, never turned into a code object, and never
unpickled: it is parsed with ``ast.parse(text, mode="eval")`` (a syntax tree only), every
node is checked against the allowlist below *before* anything runs, and the checked tree is
turned into plain Python closures, so a call does no parsing (about half a microsecond for
``0.95 ** epoch``).

Grammar
=======

============================  ========================================================
Syntax                        Allowed
============================  ========================================================
numbers                       int and float literals with ``|x| <= 1e15``; ``True`` /
                              ``False`` count as 1 / 0. No strings, bytes, complex
                              (``1j``), ``None`` or ``...``.
names                         ``epoch`` (alias ``step``): the argument; constants
                              ``pi``, ``e``, ``tau``. ``inf`` / ``nan`` are refused.
arithmetic                    ``+ - * / // % **``, unary ``+ -``
comparisons                   ``< <= > >= == !=`` (chained, as in Python)
logic                         ``and or not``, ``a if cond else b``
calls                         ``abs(x) min(x, y, ...) max(x, y, ...) floor(x) ceil(x)
                              round(x) sqrt(x) exp(x) log(x[, base]) log2(x) log10(x)
                              sin(x) cos(x) tan(x) atan(x) tanh(x) pow(x, y)``;
                              positional arguments only
everything else               refused: attributes, subscripts, lambdas, comprehensions,
                              containers, ``:=``, f-strings, ``*args``, keywords,
                              ``await``/``yield``, ``is``/``in``, bit operators, ...
============================  ========================================================

============================  ========================================================
Limit                         Value
============================  ========================================================
text length                   :data:`MAX_EXPRESSION_LENGTH` = 1000 characters (checked
                              before parsing)
syntax tree size              :data:`MAX_NODES` = 200 expression nodes
nesting depth                 :data:`MAX_DEPTH` = 32 (checked without recursion)
literal magnitude             :data:`MAX_MAGNITUDE` = 1e15
constant sub-expressions      finite (``10 ** 400`` and ``9 ** 9 ** 9`` are refused)
ints                          at most the float range: an exact int past it becomes
                              ``±inf``, decided before a giant int is built
``epoch``                     a finite real number with ``|epoch| <= 1e15``
result                        a number ``>= 0`` (it multiplies a learning rate);
                              ``inf`` or ``nan`` once a value left the float range
============================  ========================================================

Functions come from :mod:`math` (``floor``, ``ceil``, ``sqrt``, ``exp``, ``log``, ...) or
are Python's builtins (``abs``, ``min``, ``max``, ``round`` with one argument, ``pow`` with
two arguments, which is ``x ** y``). A constant sub-expression that always fails or is
not finite (``1 / 0``, ``10 ** 400``, ``9 ** 9 ** 9``) is refused when the expression is
compiled, even in a branch that might never be taken.

Exactness: Python semantics, ints kept
======================================

An expression computes *exactly* what the Python function ``lambda epoch: <same text>``
computes (the functions above imported from :mod:`math`, ``pow`` being the builtin), bit
for bit, whenever that succeeds with values in the float range: values keep
their Python types, ``int`` op ``int`` stays an exact ``int`` (``epoch // 30``,
``2 ** epoch``, ``(epoch + 1) % 10``), ``/`` is Python's correctly rounded true division,
and float operations are Python's own. The result is returned as ``float(value)``, which is
what torch's ``base_lr * lr_lambda(epoch)`` does with an ``int`` anyway.

Past the float range: IEEE-754, as torch's tensors
===================================================

Where Python raises ``OverflowError`` (``2.0 ** epoch``, ``exp(epoch)``, ``10 ** epoch``
once converted to a float, ``floor`` of an infinity) the expression goes on with what a
torch tensor gives: ``inf`` (``-inf``), ``0.0`` on underflow, and IEEE's results for
arithmetic on an infinity (``inf - inf`` and ``sin(inf)`` are ``nan``, ``1 / inf`` is 0.0).
An LR that grows past ``1.8e308`` is then ``inf``, as torch's own ``ExponentialLR`` gives,
never an exception (:mod:`lrctl._numeric` holds the helpers).

Safety does not need floats: every int is kept within the float range (about 1024 bits;
past it an exact int becomes ``±inf``), so ``+ - * // %`` on ints cost at most a
2048-bit product. The one operator that could build a giant int, ``int ** int`` with a
positive exponent, is checked *before* it runs: if ``exp * log2(|base|)`` exceeds the
float range the result is ``±inf`` without computing it (``9 ** 9 ** 9`` is refused on
``9 ** 387420489``, a constant that is not finite).

Errors of the formula itself stay errors: a division by zero, a math domain error at
finite values (``log(0)``, ``sqrt(-1)``) and a negative base with a fractional exponent
(which Python turns into ``complex``) raise :class:`~lrctl.errors.ExpressionError` naming
the sub-expression, its column and the epoch, as does a negative result.
"""

from lrctl.expressions._expression import Expression, compile_expression
from lrctl.expressions._grammar import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    MAX_MAGNITUDE,
    MAX_NODES,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_MAGNITUDE",
    "MAX_NODES",
    "Expression",
    "compile_expression",
]

# Keep the public home as these objects' module: pickles of an Expression name
# ``lrctl.expressions.compile_expression`` (its __reduce__), not the private module.
Expression.__module__ = __name__
compile_expression.__module__ = __name__
