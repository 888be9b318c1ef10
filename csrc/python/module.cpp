// Entry point of fastconv_ext._C for the setup.py build. The module itself is
// empty: importing it loads the shared library, whose static initializers
// register the fastconv operators with the PyTorch dispatcher. Only Python.h
// is included, so the operator sources stay free of Python.
#include <Python.h>

extern "C" {

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "fastconv operator library; the operators live in torch.ops.fastconv",
      -1,  // size of per-interpreter state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
