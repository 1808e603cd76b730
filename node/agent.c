/* placeholder: being written */
#include "agent.h"
