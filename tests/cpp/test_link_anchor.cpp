// Linked with --as-needed and calling no fastconv function: including
// <fastconv/ops.h> alone must keep libfastconv, and so its operators, loaded.
#include <ATen/core/dispatch/Dispatcher.h>
#include <fastconv/ops.h>

#include <iostream>

int main() {
  for (const char* name : {"fastconv::conv1d", "fastconv::conv2d", "fastconv::convolve"}) {
    if (!c10::Dispatcher::singleton().findSchema({name, ""}).has_value()) {
      std::cout << name << " is not registered: libfastconv was dropped at link time\n";
      return 1;
    }
  }
  std::cout << "fastconv operators registered\n";
  return 0;
}
